"""Registration of stage actors under explicit dotted names.

A stage actor is an ``async def (task_id, workflow, stage_id, previous=None) -> dict``:
it receives ids only (the worker reloads state) and returns small JSON that Dramatiq's
pipeline appends to the next stage's arguments. Raise :class:`StageError` for failures
that a retry cannot fix; anything else is retried by the stage's retry policy.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.errors import StageError
from actors.resources import resources

#: Every registered stage actor name -> its default queue (what workflows may reference).
STAGE_QUEUES: dict[str, str] = {}

StageFn = Callable[..., Awaitable[dict[str, Any]]]


def stage(name: str, *, queue: str = "default", **options: Any) -> Callable[[StageFn], Any]:
    """Register ``fn`` as the stage actor ``name`` on the current Dramatiq broker.

    Each run is recorded in the task's short-lived state (running, done or error), which
    ``GET /v1/tasks/{id}`` shows while the task is in flight.
    """

    def register(fn: StageFn) -> Any:
        @functools.wraps(fn)
        async def run(
            task_id: str, workflow: str, stage_id: str, *rest: Any
        ) -> dict[str, Any] | None:
            state = resources().state
            await state.stage_event(task_id, stage_id, "running")
            try:
                result = await fn(task_id, workflow, stage_id, *rest)
            except BaseException:
                await state.stage_event(task_id, stage_id, "error")
                raise
            await state.stage_event(task_id, stage_id, "done")
            return result if _piped() else None

        actor = dramatiq.actor(actor_name=name, queue_name=queue, throws=(StageError,), **options)(
            run
        )
        STAGE_QUEUES[name] = queue
        return actor

    return register


def _piped() -> bool:
    """Whether a next stage will receive this stage's result (else nothing keeps it)."""
    message = CurrentMessage.get_current_message()
    return message is None or message.options.get("pipe_target") is not None
