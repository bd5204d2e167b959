"""What a submission is made of, and the checks that refuse one before anything is stored
(``Lifecycle.submit`` runs them): the body's shape as the lifecycle sees it, admission, URLs
that must be safe to call (SSRF), and Idempotency-Keys."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from core.settings import Settings
from core.ssrf import Unresolvable, UnsafeURL, check_url
from db import idempotency
from db.models import Task
from tasks.errors import Refused
from workflows.compiler import Plan
from workflows.spec import Workflow


class Submission(Protocol):
    """What a client asks for (the API's ``CreateTask`` body, or the CLI's)."""

    @property
    def workflow(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def input(self) -> dict[str, Any]: ...
    @property
    def callback_url(self) -> str | None: ...
    @property
    def events(self) -> Sequence[str]: ...


class Ticket(Protocol):
    """A task's admission (a slot under the user's limits), given back if it is not queued."""

    async def release(self) -> None: ...


class Gate(Protocol):
    """Admission control (``api/limits.py``): raises :class:`Refused` (429, 503) or admits."""

    async def admit(self, plan: Plan, user_id: str, task_id: str) -> Ticket: ...


@dataclass(frozen=True)
class Submitted:
    task: Task
    #: True when an earlier submission with the same Idempotency-Key made ``task``.
    replayed: bool


async def check_urls(
    settings: Settings,
    workflow: Workflow,
    clean_input: Mapping[str, Any],
    callback_url: str | None,
) -> None:
    """Refuses a callback URL, or an ``audio`` input given as a URL, whose host is (or
    resolves to) a loopback, link-local, private or reserved address not in the allowlist
    (SSRF). Uploads (``upload:<id>``) need no check; the fetch checks again (DNS can
    change)."""
    if callback_url is not None:
        await _refuse_unsafe(
            callback_url, settings.callback_allowlist, "invalid_callback_url", "callback_url"
        )
    for name, spec in workflow.input.items():
        value = clean_input.get(name)
        if spec.type != "audio" or not isinstance(value, str) or value.startswith("upload:"):
            continue
        await _refuse_unsafe(
            value, settings.audio_url_allowlist, "invalid_input", f"input.{name}",
            what="audio URL", setting="AUDIO_URL_ALLOWLIST",
        )  # fmt: skip


async def _refuse_unsafe(
    url: str,
    allowlist: str,
    code: str,
    field: str,
    what: str = "callback_url",
    setting: str = "CALLBACK_ALLOWLIST",
) -> None:
    """A 422 ``code`` naming ``field`` when ``url`` is unsafe to call (core.ssrf, whose
    messages name ``what`` and ``setting``). A host that does not resolve now is accepted:
    the request checks it again right before it is made (and a callback retries)."""
    check = partial(check_url, url, allowlist, what=what, setting=setting)
    try:
        await asyncio.to_thread(check)
    except Unresolvable:
        return
    except UnsafeURL as exc:
        raise Refused(422, code, str(exc), field) from None


def check_key(key: str) -> None:
    if not key or len(key) > idempotency.MAX_KEY_LENGTH:
        raise Refused(
            400, "invalid_request",
            f"the Idempotency-Key must be 1 to {idempotency.MAX_KEY_LENGTH} characters",
            "Idempotency-Key",
        )  # fmt: skip


def same_body(task: Task, body_hash: str) -> Task:
    """``task`` when it was submitted with this body, else the 409 of a reused key."""
    if task.request_hash != body_hash:
        raise Refused(
            409, "idempotency_conflict",
            f"this Idempotency-Key was already used for task {task.id} with another body; "
            "use a new key for a new request",
            "Idempotency-Key",
        )  # fmt: skip
    return task
