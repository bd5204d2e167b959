"""Intermediate callbacks: ``started`` and ``progress`` events, for clients that ask for them.

A request's ``events`` filter (``POST /v1/tasks``) names the intermediate events its client
wants; the terminal callback (``completed``, sent by ``task.callback``) is always sent. Each
event is a message to ``task.event`` on the ``callbacks`` queue, so a slow receiver never
holds up a generation worker, delivered with the same signature, SSRF checks and attempt
record as the terminal callback (``actors.webhooks``). The body is the task's view at the
time of the try (``GET /v1/tasks/{id}``: status ``running``, the current stage and progress).

Events are best-effort and short-lived: a few quick tries (EVENT_SCHEDULE_S), and none once
the task has ended (a late ``progress`` must not arrive after the final result). Their
``webhook-id`` is ``{task_id}:started`` and ``{task_id}:progress:{stage}[:{percent}]``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import msgspec

from actors import webhooks
from actors.registry import actor
from actors.resources import Resources, resources
from core.delays import enqueue_after
from db import stage_runs
from db.models import Task, TaskStatus
from db.tasks import get_task
from tasks.view import task_view

log = logging.getLogger(__name__)

Event = Literal["started", "progress"]
#: Generation progress (0..1) at which a ``progress`` event is sent, beside stage ends.
MILESTONES = (0.25, 0.5, 0.75)
#: When an event is tried (as CALLBACK_RETRY_SCHEDULE): at once, then 1, 5 and 10 s later.
EVENT_SCHEDULE_S = (0.0, 1.0, 5.0, 10.0)


def wants(task: Task, event: Event) -> bool:
    return event in (task.callback_events or ())


async def emit(res: Resources, task: Task, event: Event, key: str) -> None:
    """Queue the ``event`` callback when the task asked for it and has somewhere to send it.
    ``key`` names this event within the task (``started``, ``progress:generate:50``)."""
    if not wants(task, event) or not task.callback_target(res.settings.marketplace_callback):
        return
    message = deliver_event.message(task.id, event, f"{task.id}:{key}")
    try:
        await asyncio.to_thread(res.broker.enqueue, message)
    except Exception as exc:
        # An event is optional news: failing to queue one must not fail (and so repeat) the
        # stage that reports it.
        log.warning("could not queue the %s event of task %s: %s", event, task.id, exc)


@actor(
    actor_name="task.event",
    queue_name="callbacks",
    max_retries=3,
    min_backoff=1000,
    max_backoff=10_000,
)
async def deliver_event(task_id: str, event: str, webhook_id: str) -> None:
    """POSTs the task's current view for one intermediate event, signed (see module doc)."""
    res = resources()
    task = await get_task(res.db, task_id)
    if task is None or TaskStatus(task.status).terminal:
        return  # the terminal callback tells the rest
    url = task.callback_target(res.settings.marketplace_callback)
    if not url:
        return
    live = await res.state.get(task_id)
    view = task_view(task, res.store, live, await stage_runs.runs(res.db, task_id))
    body = msgspec.json.encode(view)
    delivery = await webhooks.deliver(res, task_id, url, body, webhook_id, event, EVENT_SCHEDULE_S)
    if delivery.retry_in_s is not None:
        again = deliver_event.message(task_id, event, webhook_id)
        await asyncio.to_thread(enqueue_after, res.broker, again, delivery.retry_in_s)
