"""What a client sees of a task: the body of ``GET /v1/tasks/{id}`` and of every callback."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from core.backends import Media
from db.models import StageRun, Task


class OutputItem(msgspec.Struct, kw_only=True):
    name: str
    url: str
    content_type: str
    #: Audio only (None for pictures).
    duration_s: float | None
    sample_rate: int | None
    size_bytes: int
    #: When ``url`` stops working (it is presigned).
    url_expires_in_s: int
    #: With ``loudness_lufs``: the target, the loudness before and after, the gain applied.
    loudness: dict[str, Any] | None = None


class TaskError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class StageState(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    at: float | None = None
    #: What the stage returned (DAG workflows keep it; a pipeline passes it on and forgets it).
    output: Any = None
    #: For a foreach stage: how many of its items have finished, out of how many.
    items_done: int | None = None
    items: int | None = None


class TaskOut(msgspec.Struct, kw_only=True):
    task_id: str
    status: str
    workflow: str
    workflow_version: int
    user_id: str
    input: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outputs: list[OutputItem]
    error: TaskError | None = None
    #: The stage running now, and its progress 0..1 when it reports any (generation does).
    stage: str | None = None
    progress: float | None = None
    #: Progress of each stage while the task runs (kept for RESULT_TTL seconds).
    stages: dict[str, StageState] = {}
    #: True when the live parts (``stage``, ``progress``, ``stages``) could not be read (the
    #: short-lived state store is unreachable): they are left out, not known to be empty. The
    #: status, timings and outputs come from the durable record and are right.
    live_unavailable: bool = False


class TaskList(msgspec.Struct, kw_only=True):
    tasks: list[TaskOut]


def task_view(
    task: Task,
    store: Media,
    live: dict[str, Any] | None = None,
    runs: list[StageRun] | None = None,
) -> TaskOut:
    """Build the client's view, presigning a fresh URL for each output. ``live`` is the
    short-lived state (stage events, progress), ``runs`` the DAG stage runs."""
    outputs = [
        OutputItem(
            name=o["name"],
            url=store.presign(o["key"]),
            content_type=o["content_type"],
            duration_s=o.get("duration_s"),
            sample_rate=o.get("sample_rate"),
            size_bytes=o["size_bytes"],
            url_expires_in_s=store.url_ttl,
            loudness=o.get("loudness"),
        )
        for o in task.outputs or []
    ]
    error = (
        TaskError(code=task.error_code, message=task.error_message or "")
        if task.error_code
        else None
    )
    stages = {
        sid: StageState(status=entry["status"], at=entry["at"])
        for sid, entry in ((live or {}).get("stages") or {}).items()
    }
    for run in runs or []:
        if run.item >= 0:
            entry = stages.setdefault(run.stage_id, StageState(status="running"))
            entry.items = (entry.items or 0) + 1
            entry.items_done = (entry.items_done or 0) + (run.status == "succeeded")
        elif not run.stage_id.startswith("$"):
            entry = stages.setdefault(run.stage_id, StageState(status=run.status))
            entry.status, entry.output = run.status, run.output
    running = [sid for sid, st in stages.items() if st.status == "running"]
    stage = running[-1] if running else None
    reported = (live or {}).get("progress") or {}
    progress: float | None = None
    if task.status == "succeeded":
        progress = 1.0
    elif reported and reported.get("stage") == stage:
        progress = float(reported["fraction"])
    return TaskOut(
        task_id=task.id,
        status=task.status,
        workflow=task.workflow,
        workflow_version=task.workflow_version,
        user_id=task.user_id,
        input=task.input,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        outputs=outputs,
        error=error,
        stage=stage,
        progress=progress,
        stages=stages,
        live_unavailable=bool((live or {}).get("unavailable")),
    )
