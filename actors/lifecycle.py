"""The runtime's own actors: validate at the start, aggregate and callback at the end,
``task.fail`` (which ends a task whose stage failed for good) and the DAG's ``task.start`` /
``task.resume``. Every change of a task's status goes through ``tasks.lifecycle``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from actors import webhooks
from actors.context import StageContext
from actors.dag import advance, dag_arg, send
from actors.registry import actor, stage
from actors.resources import resources
from core.delays import enqueue_after
from core.errors import StageError, TaskGone
from db import stage_runs
from db.models import CallbackOutcome, RunStatus
from db.stage_runs import STAGE
from tasks.lifecycle import FAIL_ACTOR
from tasks.view import task_view
from workflows.compiler import RESUME_ACTOR, START_ACTOR
from workflows.inputs import InputError, validate_input

log = logging.getLogger(__name__)


@stage("task.validate", outputs=())
async def validate(ctx: StageContext, previous: Any = None) -> dict[str, Any]:
    """Checks, on the worker side, that the task is still wanted and its input still valid
    under the definition this worker runs (definitions can change between deploys)."""
    task = await ctx.active_task()
    try:
        validate_input(ctx.res.workflows[ctx.workflow], task.input)
    except InputError as exc:
        raise StageError("invalid_input", f"{exc.field}: {exc.message}") from None
    return {}


@stage("task.aggregate", outputs=())
async def aggregate(ctx: StageContext, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Collects the stored outputs into the final result: Redis for the short term, the
    database for good. Running it twice changes nothing (the first ending wins)."""
    outputs: list[dict[str, Any]] = list((previous or {}).get("outputs", []))
    audio_s = sum(float(o["duration_s"] or 0.0) for o in outputs if o.get("duration_s"))
    if not await ctx.res.lifecycle.succeed(ctx.task_id, outputs, audio_s):
        # Cancelled (or failed) meanwhile: the run stops here, so the stages after it (the
        # callback) do not tell the client a second time.
        task = await ctx.task_row()
        raise TaskGone(ctx.task_id, task.status if task else None)
    return {}


@actor(actor_name=FAIL_ACTOR, queue_name="default", max_retries=10, min_backoff=500)
async def fail(task_id: str, stage_id: str, code: str, message: str) -> None:
    """Ends a task ``failed`` with a client-facing error, then tells the client (the
    workflow's on_failure and finally handlers, else the callback)."""
    await resources().lifecycle.fail(task_id, code, message)


@actor(actor_name=START_ACTOR, queue_name="default", max_retries=10, min_backoff=500)
async def start(task_id: str, workflow: str) -> None:
    """Starts a DAG run: queues its root stages."""
    res = resources()
    await advance(res, res.plans[workflow], task_id)


@actor(actor_name=RESUME_ACTOR, queue_name="default", max_retries=10, min_backoff=500)
async def resume(task_id: str, workflow: str) -> None:
    """Re-sends the runs a stopped process had queued or started, then advances.

    Only for a queue that lost its messages: elsewhere the broker still holds them, and
    sending them again would run those stages twice.
    """
    res = resources()
    plan = res.plans[workflow]
    for run in await stage_runs.runs(res.db, task_id):
        if plan.has(run.stage_id) and RunStatus(run.status) in (
            RunStatus.QUEUED,
            RunStatus.RUNNING,
        ):
            step = plan.step(run.stage_id)
            if run.item == STAGE and step.stage.foreach:
                continue  # its items carry the work
            await send(res, step.message(plan.workflow.name, task_id, dag_arg(run.item)))
    await advance(res, plan, task_id)


@stage("task.callback", queue="callbacks", max_retries=10, min_backoff=1000, max_backoff=300_000)
async def callback(ctx: StageContext, previous: Any = None) -> dict[str, Any]:
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
    res, task_id, task = ctx.res, ctx.task_id, await ctx.task_row()
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
        again = callback.message(task_id, ctx.workflow, ctx.stage_id)
        await asyncio.to_thread(enqueue_after, res.broker, again, delivery.retry_in_s)
    elif delivery.outcome == CallbackOutcome.GAVE_UP:
        raise StageError(
            "callback_gave_up",
            f"callback {webhook_id} to {url} gave up after {delivery.attempt} tries",
        )
    return {"callback": delivery.outcome}
