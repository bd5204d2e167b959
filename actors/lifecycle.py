"""Stages every workflow shares: validate at the start, aggregate and callback at the end,
and ``task.fail``, which ends a task whose stage failed for good."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dramatiq
import msgspec

from actors import webhooks
from actors.errors import StageError, TaskGone
from actors.registry import stage
from actors.resources import resources
from core.delays import enqueue_after
from db.models import CallbackOutcome, Task, TaskStatus
from db.tasks import finish_task, get_task
from tasks.view import task_view
from workflows.compiler import announce_end
from workflows.inputs import InputError, validate_input

log = logging.getLogger(__name__)


async def active_task(task_id: str) -> Task:
    """The task's row; raises TaskGone when it is missing or has already ended."""
    task = await get_task(resources().db, task_id)
    if task is None or TaskStatus(task.status).terminal:
        raise TaskGone(task_id, task.status if task else None)
    return task


@stage("task.validate", outputs=())
async def validate(
    task_id: str, workflow: str, stage_id: str, previous: Any = None
) -> dict[str, Any]:
    """Checks, on the worker side, that the task is still wanted and its input still valid
    under the definition this worker runs (definitions can change between deploys)."""
    task = await active_task(task_id)
    try:
        validate_input(resources().workflows[workflow], task.input)
    except InputError as exc:
        raise StageError("invalid_input", f"{exc.field}: {exc.message}") from None
    return {}


@stage("task.aggregate", outputs=())
async def aggregate(
    task_id: str, workflow: str, stage_id: str, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Collects the stored outputs into the final result: Redis for the short term, the
    database for good. Running it twice changes nothing (the first ending wins)."""
    outputs: list[dict[str, Any]] = list((previous or {}).get("outputs", []))
    res = resources()
    audio_s = sum(float(o["duration_s"] or 0.0) for o in outputs if o.get("duration_s"))
    ended = await finish_task(
        res.db, task_id, TaskStatus.SUCCEEDED, outputs=outputs, audio_s=audio_s
    )
    if not ended:
        task = await get_task(res.db, task_id)
        if task is None or task.status != TaskStatus.SUCCEEDED:
            # Cancelled (or failed) meanwhile: the run stops here, so the stages after it (the
            # callback) do not tell the client a second time.
            raise TaskGone(task_id, task.status if task else None)
    await res.state.set_result(task_id, {"status": TaskStatus.SUCCEEDED, "outputs": outputs})
    return {}


@dramatiq.actor(actor_name="task.fail", queue_name="default", max_retries=10, min_backoff=500)
async def fail(task_id: str, stage_id: str, code: str, message: str) -> None:
    """Ends a task ``failed`` with a client-facing error, then calls the client back."""
    res = resources()
    ended = await finish_task(
        res.db, task_id, TaskStatus.FAILED, error_code=code, error_message=message
    )
    if not ended:  # already ended (cancelled, or a duplicate failure): nothing more to tell
        return
    await res.state.set_result(task_id, {"status": TaskStatus.FAILED, "code": code})
    task = await get_task(res.db, task_id)
    if task is None:
        return
    # The workflow says what to do on failure (on_failure, then finally), else the callback.
    plan = res.plans.get(task.workflow)
    await asyncio.to_thread(announce_end, res.broker, task_id, task.workflow, plan, failed=True)


@stage("task.callback", queue="callbacks", max_retries=10, min_backoff=1000, max_backoff=300_000)
async def callback(
    task_id: str, workflow: str, stage_id: str, previous: Any = None
) -> dict[str, Any]:
    """POSTs the task's final view (the body of GET /v1/tasks/{id}) to the client, signed,
    on CALLBACK_RETRY_SCHEDULE (whatever the stage's own retry policy says: that one covers
    this worker's own failures, a database that does not answer, say).

    A try that fails for a reason worth another (network error, 5xx, 429) queues the next try
    for its time, the wait held by the broker (core.delays), and this message ends: the
    stages after it go on, and a worker restarted meanwhile loses nothing. After the last try
    it gives up: ``callback_gave_up`` dead-letters the message (the admin API lists it, and an
    operator can retry it once the receiver is back), and the give-up is counted and recorded.
    Refused URLs, redirects and other 4xx answers are final. Every try is recorded in
    ``callback_attempts`` with what came of it (see actors/webhooks.py).
    """
    res = resources()
    task = await get_task(res.db, task_id)
    if task is None:
        return {}
    url = task.callback_target(res.settings.marketplace_callback)
    if not url:
        return {"callback": "none"}
    body = msgspec.json.encode(task_view(task, res.store))
    # The id names the outcome: a task reopened by an operator (a dead letter retried) that
    # then succeeds is a new message, which receivers must not drop as a duplicate.
    webhook_id = f"{task_id}:{task.status}"
    schedule = res.settings.callback_schedule_s
    delivery = await webhooks.deliver(res, task_id, url, body, webhook_id, "completed", schedule)
    if delivery.retry_in_s is not None:
        again = callback.message(task_id, workflow, stage_id)
        await asyncio.to_thread(enqueue_after, res.broker, again, delivery.retry_in_s)
    elif delivery.outcome == CallbackOutcome.GAVE_UP:
        raise StageError(
            "callback_gave_up",
            f"callback {webhook_id} to {url} gave up after {delivery.attempt} tries",
        )
    return {"callback": delivery.outcome}
