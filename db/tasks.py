"""Queries on the task record. Every state change is a conditional UPDATE so a message
delivered twice cannot move a finished task backwards."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Update, bindparam, cast, func, select, update

from core.metrics import TASKS_FINISHED
from db.engine import Database
from db.models import Task, TaskStatus, UtcDateTime

_ACTIVE = (TaskStatus.QUEUED, TaskStatus.RUNNING)
_TERMINAL = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(UTC)


#: The two transitions every task makes, built once (statements are then only bound and
#: run, on a Core connection: the ORM's bulk-update bookkeeping cost more than the query).
_START = (
    update(Task)
    .where(Task.id == bindparam("task_id"), Task.status == TaskStatus.QUEUED)
    .values(
        status=TaskStatus.RUNNING,
        started_at=func.coalesce(Task.started_at, bindparam("now", type_=UtcDateTime())),
    )
    .returning(Task.id)
)


@functools.cache
def _finish(dialect: str) -> Update:
    """The ending: a conditional UPDATE whose processing time the database computes from the
    ``started_at`` it holds (each database says ``now - start`` its own way)."""
    now = bindparam("now", type_=UtcDateTime())
    started = func.coalesce(Task.started_at, now)
    if dialect == "sqlite":
        seconds: ColumnElement[float] = (func.julianday(now) - func.julianday(started)) * 86400.0
    else:
        seconds = cast(func.extract("epoch", now - started), Float)
    return (
        update(Task)
        .where(Task.id == bindparam("task_id"), Task.status.in_(_ACTIVE))
        .values(
            status=bindparam("status"),
            finished_at=now,
            started_at=started,
            processing_s=seconds,
            outputs=bindparam("outputs", type_=Task.__table__.c.outputs.type),
            audio_s=bindparam("audio_s"),
            error_code=bindparam("error_code"),
            error_message=bindparam("error_message"),
        )
        .returning(Task.workflow)
    )


async def insert_task(db: Database, task: Task) -> Task:
    async with db.session() as session, session.begin():
        session.add(task)
    return task


async def get_task(db: Database, task_id: str) -> Task | None:
    async with db.single() as session:
        return await session.get(Task, task_id)


async def recent_tasks(db: Database, user_id: str, limit: int) -> list[Task]:
    async with db.session() as session:
        rows = await session.scalars(
            select(Task)
            .where(Task.user_id == user_id)
            .order_by(Task.created_at.desc())
            .limit(limit)
        )
        return list(rows)


async def unfinished_tasks(db: Database) -> list[tuple[str, str]]:
    """(id, workflow) of every task still queued or running, oldest first."""
    async with db.session() as session:
        rows = await session.execute(
            select(Task.id, Task.workflow).where(Task.status.in_(_ACTIVE)).order_by(Task.created_at)
        )
        return [(row[0], row[1]) for row in rows]


async def start_task(db: Database, task_id: str) -> bool:
    """queued -> running, setting started_at. True only for the call that made the move (so
    the ``started`` event is sent once, however many stages or deliveries race to it)."""
    rows = await db.execute_one(_START, {"task_id": task_id, "now": utcnow()})
    return bool(rows)


async def finish_task(
    db: Database,
    task_id: str,
    status: TaskStatus,
    *,
    outputs: Sequence[dict[str, Any]] = (),
    audio_s: float = 0.0,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Move an active task to a terminal status. False when it had already ended, so the
    first ending wins and a redelivered message changes nothing.

    One conditional UPDATE, atomic by itself (no transaction, one round trip): the row moves
    only from ``queued`` or ``running``, and its processing time is computed by the database
    from the ``started_at`` it holds."""
    params = {
        "task_id": task_id, "now": utcnow(), "status": str(status), "outputs": list(outputs),
        "audio_s": audio_s, "error_code": error_code, "error_message": error_message,
    }  # fmt: skip
    rows = await db.execute_one(_finish(db.engine.dialect.name), params)
    workflow = rows[0][0] if rows else None
    if workflow is None:
        return False
    # Every ending of a task passes here, once (the first ending wins), so this is the one
    # place that counts them all, whichever process wrote it.
    TASKS_FINISHED.labels(workflow, str(status)).inc()
    return True


@dataclass
class WorkflowStats:
    workflow: str
    counts: dict[str, int] = field(default_factory=dict)
    audio_seconds: float = 0.0
    avg_processing_s: float | None = None


async def user_stats(
    db: Database, user_id: str, start: datetime | None, end: datetime | None
) -> list[WorkflowStats]:
    """Per workflow: tasks by status, seconds of audio generated, mean processing time."""
    filters = [Task.user_id == user_id]
    if start is not None:
        filters.append(Task.created_at >= start)
    if end is not None:
        filters.append(Task.created_at < end)
    query = (
        select(
            Task.workflow,
            Task.status,
            func.count(),
            func.coalesce(func.sum(Task.audio_s), 0.0),
            func.sum(Task.processing_s),
            func.count(Task.processing_s),
        )
        .where(*filters)
        .group_by(Task.workflow, Task.status)
        .order_by(Task.workflow)
    )
    by_workflow: dict[str, WorkflowStats] = {}
    totals: dict[str, tuple[float, int]] = {}
    async with db.session() as session:
        for workflow, status, count, audio, proc_sum, proc_n in await session.execute(query):
            stats = by_workflow.setdefault(workflow, WorkflowStats(workflow))
            stats.counts[status] = int(count)
            stats.audio_seconds += float(audio)
            seconds, n = totals.get(workflow, (0.0, 0))
            totals[workflow] = (seconds + float(proc_sum or 0.0), n + int(proc_n))
    for workflow, (seconds, n) in totals.items():
        by_workflow[workflow].avg_processing_s = seconds / n if n else None
    return list(by_workflow.values())


async def stale_active_tasks(db: Database, created_before: datetime, limit: int) -> list[Task]:
    """Tasks still queued or running that were created before ``created_before``, oldest
    first, at most ``limit`` (the sweep's candidates: younger ones cannot be late yet)."""
    async with db.session() as session:
        rows = await session.scalars(
            select(Task)
            .where(Task.status.in_(_ACTIVE), Task.created_at < created_before)
            .order_by(Task.created_at)
            .limit(limit)
        )
        return list(rows)


async def untold_ended_tasks(
    db: Database, ended_after: datetime, ended_before: datetime, limit: int
) -> list[Task]:
    """Tasks that ended in the window and have no try of their final callback on record (its
    ``webhook_id`` is ``{task_id}:{status}``): what an API that died between ending a task (a
    cancel, the sweep) and queueing its callback leaves behind. Oldest first."""
    from db.models import CallbackAttempt

    tried = (
        select(CallbackAttempt.id)
        .where(
            CallbackAttempt.task_id == Task.id,
            CallbackAttempt.webhook_id == Task.id + ":" + Task.status,
        )
        .exists()
    )
    async with db.session() as session:
        rows = await session.scalars(
            select(Task)
            .where(
                Task.finished_at > ended_after,
                Task.finished_at < ended_before,
                Task.status.in_(_TERMINAL),
                ~tried,
            )
            .order_by(Task.finished_at)
            .limit(limit)
        )
        return list(rows)


async def reopen_task(db: Database, task_id: str) -> bool:
    """failed -> running, clearing the error and the end, so that a stage an operator retries
    (a dead letter) can finish the task. False unless the task was ``failed``: a task that
    succeeded or was cancelled stays ended."""
    async with db.session() as session, session.begin():
        result = await session.execute(
            update(Task)
            .where(Task.id == task_id, Task.status == TaskStatus.FAILED)
            .values(
                status=TaskStatus.RUNNING,
                error_code=None,
                error_message=None,
                finished_at=None,
                processing_s=None,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]
