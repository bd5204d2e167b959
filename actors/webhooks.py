"""Callback delivery: Standard Webhooks signatures, SSRF checks, and a record of every try.

Each delivery is tried on a schedule (CALLBACK_RETRY_SCHEDULE for the terminal callback: the
one Svix documents by default, 8 tries over about 28 hours; a few quick tries for the
intermediate events): ``deliver`` makes one try, records what came of it, and says when the
next is due; its caller queues that next try, the wait held by the broker (core.delays).

Each delivery has a ``webhook-id`` that stays the same across its retries (``{task_id}:
{status}`` for the terminal callback, ``{task_id}:started``, ``{task_id}:progress:...`` for
intermediate events), so a receiver can drop duplicates; ``webhook-timestamp`` is the time of
this try and ``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
(https://www.standardwebhooks.com, ``core.signing``). The key comes from ``WEBHOOK_SECRET``
(``whsec_`` + base64); it never appears in logs, records or bodies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple

import httpx

from actors.resources import Resources
from core.metrics import CALLBACK_ATTEMPTS, CALLBACK_FAILURES
from core.signing import sign, webhook_secret
from core.ssrf import Unresolvable, UnsafeURL, pinned, safe_addresses
from db.callbacks import next_attempt, record_attempt
from db.models import CallbackOutcome
from db.tasks import utcnow

log = logging.getLogger(__name__)

USER_AGENT = "aimarket-callback"


class Delivery(NamedTuple):
    """What came of one try (recorded in ``callback_attempts`` as well)."""

    attempt: int
    outcome: CallbackOutcome
    #: Seconds until the next try: set when ``outcome`` is ``retrying``.
    retry_in_s: float | None = None


def signed_headers(
    secret: str, webhook_id: str, timestamp: int, body: bytes, event: str = "completed"
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        # Which event this is (started, progress, completed); the body says it too (status,
        # progress), but a receiver can route on the header without parsing.
        "aimarket-event": event,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


async def deliver(
    res: Resources,
    task_id: str,
    url: str,
    body: bytes,
    webhook_id: str,
    event: str,
    schedule: Sequence[float],
) -> Delivery:
    """One try at POSTing ``body`` to ``url``, recorded in ``callback_attempts``.

    ``schedule`` says when the tries of this delivery are (CALLBACK_RETRY_SCHEDULE): after a
    network error, DNS failure, 5xx or 429, the outcome is ``retrying`` with the wait before
    the next try, or ``gave_up`` after the last one; the caller queues that next try. A URL
    refused by the SSRF check (DNS can change after submission), a redirect (never followed)
    and other 4xx answers are final (``refused``); 2xx is ``delivered``.
    """
    settings = res.settings
    secret = webhook_secret(settings)
    attempt = await next_attempt(res.db, task_id, webhook_id)
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    retry = False
    try:
        addresses = await asyncio.to_thread(safe_addresses, url, settings.callback_allowlist)
    except Unresolvable as exc:
        error, retry = str(exc), True
    except UnsafeURL as exc:
        error = f"refused: {exc}"
    else:
        target, extra_headers, extensions = pinned(url, addresses)
        headers = signed_headers(secret, webhook_id, int(time.time()), body, event)
        try:
            async with httpx.AsyncClient(
                timeout=settings.callback_timeout, follow_redirects=False
            ) as client:
                response = await client.post(
                    target,
                    content=body,
                    headers={**headers, **extra_headers},
                    extensions=extensions,
                )
            status = response.status_code
        except httpx.HTTPError as exc:
            error, retry = f"{type(exc).__name__}: {exc}".rstrip(": "), True
    latency_ms = int((time.monotonic() - started) * 1000)
    if status is not None and (status >= 500 or status == 429):
        retry = True
    retry_in_s = schedule[attempt] if retry and attempt < len(schedule) else None
    if retry:
        outcome = CallbackOutcome.GAVE_UP if retry_in_s is None else CallbackOutcome.RETRYING
    elif status is not None and 200 <= status < 300:
        outcome = CallbackOutcome.DELIVERED
    else:
        outcome = CallbackOutcome.REFUSED
    await record_attempt(
        res.db,
        task_id=task_id,
        webhook_id=webhook_id,
        attempt=attempt,
        url=url,
        status_code=status,
        error=error,
        latency_ms=latency_ms,
        outcome=outcome,
        next_attempt_at=None if retry_in_s is None else utcnow() + timedelta(seconds=retry_in_s),
    )
    _report(task_id, webhook_id, event, attempt, outcome, status, error, retry_in_s)
    return Delivery(attempt, outcome, retry_in_s)


def _report(
    task_id: str,
    webhook_id: str,
    event: str,
    attempt: int,
    outcome: CallbackOutcome,
    status: int | None,
    error: str | None,
    retry_in_s: float | None,
) -> None:
    """The metrics and the log line of one try."""
    reason = error or f"answered {status}"
    match outcome:
        case CallbackOutcome.DELIVERED:
            CALLBACK_ATTEMPTS.labels(event, "delivered").inc()
        case CallbackOutcome.RETRYING:
            CALLBACK_ATTEMPTS.labels(event, "error").inc()
            log.info(
                "callback %s try %d failed, next in %g s: %s",
                webhook_id,
                attempt,
                retry_in_s,
                reason,
            )
        case CallbackOutcome.GAVE_UP:
            CALLBACK_ATTEMPTS.labels(event, "error").inc()
            CALLBACK_FAILURES.labels(event, "exhausted").inc()
            log.warning("callback for task %s gave up after %d tries: %s", task_id, attempt, reason)
        case CallbackOutcome.REFUSED:
            CALLBACK_ATTEMPTS.labels(event, "refused").inc()
            CALLBACK_FAILURES.labels(event, "refused").inc()
            if status is not None and 300 <= status < 400:
                log.warning(
                    "callback for task %s answered a redirect %s (not followed)", task_id, status
                )
            elif status is not None:
                log.warning("callback for task %s refused: %s", task_id, status)
            else:
                log.warning("callback for task %s not sent: %s", task_id, error)
