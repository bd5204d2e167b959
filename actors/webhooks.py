"""Callback delivery: Standard Webhooks signatures, SSRF checks, and a record of every try.

Each delivery has a ``webhook-id`` that stays the same across its retries (``{task_id}:
{status}`` for the terminal callback, ``{task_id}:started``, ``{task_id}:progress:...`` for
intermediate events), so a receiver can drop duplicates; ``webhook-timestamp`` is the time of
this try and ``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
(https://www.standardwebhooks.com). The key comes from ``WEBHOOK_SECRET`` (``whsec_`` +
base64); it never appears in logs, records or bodies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

import dramatiq
import httpx
from dramatiq.middleware import CurrentMessage

from actors.resources import Resources
from actors.retries import retryable
from aimarket.backends import kept_secret
from aimarket.metrics import CALLBACK_ATTEMPTS, CALLBACK_FAILURES
from aimarket.settings import Settings, SettingsError
from aimarket.ssrf import Unresolvable, UnsafeURL, pinned, safe_addresses
from db.callbacks import next_attempt, record_attempt

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
USER_AGENT = "aimarket-callback"


class CallbackError(RuntimeError):
    """A try that is worth another one (network error, 5xx, 429, DNS failure)."""


def webhook_secret(settings: Settings) -> str:
    """WEBHOOK_SECRET; with an embedded database and none set, a random one kept in
    DATA_DIR/webhook-secret (as MARKETPLACE_TOKEN is). A deployment with a real database
    must set it (its receivers need to know it in advance)."""
    return kept_secret(
        settings,
        "WEBHOOK_SECRET",
        "webhook-secret",
        lambda: SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode(),
    )


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional, as in the
    reference libraries)."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError("WEBHOOK_SECRET is invalid: expected whsec_ + base64") from None


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one try."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


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


def _last_try(exc: BaseException) -> bool:
    """Whether Dramatiq will not run this message again after ``exc``: the workflow stage's
    retry policy when the message has one, else the actor's own max_retries."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return True
    options = message.options
    policy = options.get("retry_policy")
    if policy is not None and not retryable(exc, policy["retry_on"]):
        return True
    try:
        actor = dramatiq.get_broker().get_actor(message.actor_name)
        default = actor.options.get("max_retries", 20)
    except Exception:  # an unknown actor: Dramatiq's default
        default = 20
    max_retries = options.get("max_retries", default)
    return bool(options.get("retries", 0) >= max_retries)


async def deliver(
    res: Resources, task_id: str, url: str, body: bytes, webhook_id: str, event: str
) -> dict[str, Any]:
    """One try at POSTing ``body`` to ``url``, recorded in ``callback_attempts``.

    Raises CallbackError on network errors, DNS failures, 5xx and 429, so Dramatiq retries
    with backoff. A URL refused by the SSRF check (DNS can change after submission), a
    redirect (never followed) and other 4xx answers are final: recorded, logged, not retried.
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
    await record_attempt(
        res.db,
        task_id=task_id,
        webhook_id=webhook_id,
        attempt=attempt,
        url=url,
        status_code=status,
        error=error,
        latency_ms=latency_ms,
    )
    if status is not None and (status >= 500 or status == 429):
        error, retry = f"answered {status}", True
    if retry:
        CALLBACK_ATTEMPTS.labels(event, "error").inc()
        failure = CallbackError(f"callback {webhook_id} try {attempt}: {error}")
        if _last_try(failure):
            CALLBACK_FAILURES.labels(event, "exhausted").inc()
            log.warning("callback for task %s gave up after %d tries: %s", task_id, attempt, error)
        else:
            log.info("callback for task %s try %d failed (retried): %s", task_id, attempt, error)
        raise failure
    if error is not None:
        CALLBACK_ATTEMPTS.labels(event, "refused").inc()
        CALLBACK_FAILURES.labels(event, "refused").inc()
        log.warning("callback for task %s not sent: %s", task_id, error)
        return {"callback": "refused"}
    assert status is not None
    delivered = 200 <= status < 300
    CALLBACK_ATTEMPTS.labels(event, "delivered" if delivered else "refused").inc()
    if not delivered:
        CALLBACK_FAILURES.labels(event, "refused").inc()
    if 300 <= status < 400:
        log.warning("callback for task %s answered a redirect %s (not followed)", task_id, status)
    elif status >= 400:
        log.warning("callback for task %s refused: %s", task_id, status)
    return {"callback": status}
