"""Embedded mode: with no RabbitMQ, the API process runs the Dramatiq workers itself."""

from __future__ import annotations

import logging
from datetime import timedelta

import anyio.to_thread
import dramatiq

from actors.warmup import configure_models
from api.services import Services
from core.delays import enqueue_after
from db.callbacks import pending_deliveries
from db.tasks import unfinished_tasks, utcnow
from tasks.sweep import RESEND_WINDOW_S
from workflows.compiler import CALLBACK_ACTOR

log = logging.getLogger(__name__)

#: Seconds a stopping process waits for running stages before it leaves them to the restart.
STOP_TIMEOUT_S = 10


def start_worker(services: Services) -> dramatiq.Worker:
    broker = services.broker
    configure_models(services.settings)
    # The Dramatiq CLI does this in a worker process; it arms the stage time limits.
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=services.settings.embedded_threads)
    worker.start()
    return worker


async def stop_worker(worker: dramatiq.Worker) -> None:
    await anyio.to_thread.run_sync(lambda: worker.stop(timeout=STOP_TIMEOUT_S * 1000))


async def resume_unfinished(services: Services) -> int:
    """Re-queue the tasks this process had not finished when it last stopped.

    The in-process queue does not outlive the process, but the database does: every task
    still queued or running is run again from its first stage (stages are safe to repeat).
    A task whose workflow is gone ends failed with a clear error.
    """
    resumed = 0
    for task_id, workflow in await unfinished_tasks(services.db):
        resumed += await services.lifecycle.resume(task_id, workflow)
    if resumed:
        log.info("resumed %d unfinished task(s) after a restart", resumed)
    await resume_deliveries(services)
    return resumed


async def resume_deliveries(services: Services) -> int:
    """Queue again the next try of each final callback that was waiting for it when this
    process stopped (the in-process queue held the wait), at the time it was due."""
    now = utcnow()
    window = timedelta(seconds=RESEND_WINDOW_S)
    pending = await pending_deliveries(services.db, now - window, now + window, limit=10_000)
    callback = services.broker.get_actor(CALLBACK_ACTOR)
    for task, due in pending:
        message = callback.message(task.id, task.workflow, "callback")
        wait = max(0.0, (due - now).total_seconds())
        await anyio.to_thread.run_sync(enqueue_after, services.broker, message, wait)
    if pending:
        log.info("queued again the next callback try of %d task(s) after a restart", len(pending))
    return len(pending)
