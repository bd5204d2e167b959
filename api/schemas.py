"""Request and response bodies (msgspec) that are not the task view itself."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

UserId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, description="The marketplace's user id.")
]


#: Intermediate callbacks a client may ask for; the terminal one (``completed``) is always sent.
CallbackEvent = Literal["started", "progress", "completed"]


class CreateTask(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    workflow: Annotated[str, msgspec.Meta(description="A workflow name from GET /v1/workflows.")]
    user_id: UserId
    input: Annotated[
        dict[str, Any],
        msgspec.Meta(description="Inputs, checked against the workflow's input schema."),
    ] = {}
    callback_url: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=2000,
                description="Where the final task view is POSTed; "
                "defaults to MARKETPLACE_CALLBACK.",
            ),
        ]
        | None
    ) = None
    events: Annotated[
        list[CallbackEvent],
        msgspec.Meta(
            max_length=3,
            description="Callbacks wanted besides the final one: `started` (a worker took the "
            "task), `progress` (a stage ended; generation at 25, 50 and 75 %). `completed`, "
            "the final result, is always sent. Each is the task view at that moment, signed "
            "like the final one, with an `aimarket-event` header naming the event.",
        ),
    ] = []


class WorkflowStatsOut(msgspec.Struct, kw_only=True):
    workflow: str
    counts: dict[str, int]
    total: int
    audio_seconds: float
    avg_processing_s: float | None


class StatsOut(msgspec.Struct, kw_only=True, rename={"start": "from", "end": "to"}):
    user_id: str
    start: datetime | None
    end: datetime | None
    workflows: list[WorkflowStatsOut]


class WorkflowOut(msgspec.Struct, kw_only=True):
    name: str
    version: int
    description: str
    input_schema: dict[str, Any]
    outputs: dict[str, Any]
    stages: list[dict[str, Any]]


class WorkflowsOut(msgspec.Struct, kw_only=True):
    workflows: list[WorkflowOut]


class HealthOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    checks: dict[str, str] = {}
