"""Retries with each stage's own policy: attempts, initial delay, growth factor, cap, jitter
and which errors are worth retrying. Dramatiq's Retries doubles a fixed minimum and retries
every error; a workflow says more than that, per stage."""

from __future__ import annotations

import random
import time
import traceback
from typing import Any

import dramatiq
from dramatiq.middleware import Retries

from core.errors import StageError


def retry_delay_ms(policy: dict[str, Any], retries: int) -> int:
    """Delay before attempt ``retries + 2``: initial * factor**retries, capped, with jitter
    (a random 50-100 % of it, so failed tasks do not come back in lockstep)."""
    delay = min(
        policy["backoff_max_s"], policy["backoff_initial_s"] * policy["backoff_factor"] ** retries
    )
    if policy.get("jitter", True):
        delay *= random.uniform(0.5, 1.0)
    return max(1, int(delay * 1000))


def retryable(exception: BaseException, retry_on: list[str]) -> bool:
    """Whether ``retry_on`` (exception class names or error codes; "*" for any) covers it.

    A StageError is never retried: it says no retry can help."""
    if isinstance(exception, StageError):
        return False
    if "*" in retry_on:
        return True
    names = {cls.__name__ for cls in type(exception).__mro__}
    names |= {f"{cls.__module__}.{cls.__name__}" for cls in type(exception).__mro__}
    code = getattr(exception, "code", None)
    if type(exception).__name__ == "TimeLimitExceeded":
        names.add("timeout")
    return bool(names.intersection(retry_on) or (code and code in retry_on))


class StageRetries(Retries):
    """Dramatiq's Retries, reading a ``retry_policy`` message option when there is one."""

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        policy = message.options.get("retry_policy")
        if exception is None or policy is None:
            super().after_process_message(  # type: ignore[no-untyped-call]
                broker, message, result=result, exception=exception
            )
            return
        retries = message.options.get("retries", 0)
        if not retryable(exception, policy["retry_on"]) or retries + 1 >= policy["max_attempts"]:
            self.logger.warning("Giving up on message %r.", message.message_id)
            message.fail()
            return
        message.options["retries"] = retries + 1
        message.options["traceback"] = traceback.format_exc(limit=30)
        message.options["requeue_timestamp"] = int(time.time() * 1000)
        delay = retry_delay_ms(policy, retries)
        self.logger.info("Retrying message %r in %d milliseconds.", message.message_id, delay)
        broker.enqueue(message, delay=delay)
