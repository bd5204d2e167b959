"""Turns a stage that failed for good into a failed task whose client is told.

Dramatiq's ``on_failure`` callbacks fire on every failed attempt; this middleware acts once,
when the Retries middleware (which runs before it) has given up and marked the message failed.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from actors.errors import StageError

log = logging.getLogger(__name__)

#: Actors whose own failure must not start another failure run.
_TERMINAL_ACTORS = frozenset({"task.fail", "task.callback", "task.event"})


def describe(exc: BaseException, stage_id: str) -> tuple[str, str]:
    """The (code, message) a client sees for a stage's final exception."""
    if isinstance(exc, StageError):
        return exc.code, exc.message
    if type(exc).__name__ == "TimeLimitExceeded":
        return "timeout", f"stage '{stage_id}' ran past its time limit"
    return "stage_failed", f"stage '{stage_id}' failed: {type(exc).__name__}: {exc}"[:2000]


class TaskFailures(Middleware):
    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not message.failed or message.actor_name in _TERMINAL_ACTORS:
            return
        args = message.args
        if len(args) < 3:
            return
        task_id, _workflow, stage_id = args[0], args[1], args[2]
        code, text = describe(exception, stage_id)
        log.warning("task %s failed in stage %s: %s", task_id, stage_id, code)
        broker.get_actor("task.fail").send(task_id, stage_id, code, text)
