"""Turns a stage that failed for good into a failed task whose client is told.

Dramatiq's ``on_failure`` callbacks fire on every failed attempt; this middleware acts once,
when the Retries middleware (which runs before it) has given up and marked the message failed.
"""

from __future__ import annotations

import functools
import logging
import traceback
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from core.errors import StageError
from core.state import FAILURE_KEY, FAILURE_TTL_S, MAX_TRACEBACK

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


def record_final_error(message: Any, exception: BaseException) -> None:
    """Keep the traceback of the attempt that failed for good, for the admin API's list of dead
    letters. Dramatiq records a traceback when it schedules a retry, not when it gives up, and
    RabbitMQ dead-letters the body as it was delivered: without this, a dead letter shows the
    error of the attempt before last (or none). The in-process broker keeps the message object
    itself, so setting its option is enough there; with Redis the traceback is also kept under
    the message id, as long as RabbitMQ keeps dead letters."""
    trace = "".join(traceback.format_exception(exception))[-MAX_TRACEBACK:]
    message.options["traceback"] = trace
    try:
        from actors.resources import resources

        url = resources().settings.redis_url
        if url is not None:
            _redis(url).set(FAILURE_KEY.format(message.message_id), trace, ex=FAILURE_TTL_S)
    except Exception as exc:  # the dead letter is listed anyway, with the older traceback
        log.warning("could not keep the final error of message %s: %s", message.message_id, exc)


@functools.cache
def _redis(url: str) -> Any:
    import redis

    # Blocking, on the worker thread that runs the middleware (no event loop there).
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


class TaskFailures(Middleware):
    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not message.failed:
            return
        record_final_error(message, exception)
        if message.actor_name in _TERMINAL_ACTORS:
            return
        args = message.args
        if len(args) < 3:
            return
        task_id, _workflow, stage_id = args[0], args[1], args[2]
        code, text = describe(exception, stage_id)
        log.warning("task %s failed in stage %s: %s", task_id, stage_id, code)
        broker.get_actor("task.fail").send(task_id, stage_id, code, text)
