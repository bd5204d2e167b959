"""Registration of stage actors under explicit dotted names.

A stage actor is an ``async def (task_id, workflow, stage_id, previous=None) -> dict``:
it receives ids only (the worker reloads state) and returns small JSON that Dramatiq's
pipeline appends to the next stage's arguments. Raise :class:`StageError` for failures
that a retry cannot fix; anything else is retried by the stage's retry policy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.errors import StageError
from actors.resources import resources
from core.logs import log_context
from core.metrics import STAGE_DURATION
from db.models import Task, TaskStatus
from db.tasks import get_task, start_task, utcnow

log = logging.getLogger(__name__)

#: Every registered stage actor name -> its default queue (what workflows may reference).
STAGE_QUEUES: dict[str, str] = {}
#: The output keys of actors that declare them (lets the loader check `stages.x.key`).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {}

StageFn = Callable[..., Awaitable[dict[str, Any]]]


def stage(
    name: str,
    *,
    queue: str = "default",
    outputs: tuple[str, ...] | None = None,
    **options: Any,
) -> Callable[[StageFn], Any]:
    """Register ``fn`` as the stage actor ``name`` on the current Dramatiq broker.

    ``outputs`` names the keys of the dict it returns, so workflows that read a key it does
    not have are refused when they load.

    Each run is recorded in the task's short-lived state (running, done or error), which
    ``GET /v1/tasks/{id}`` shows while the task is in flight, and in the
    ``aimarket_stage_duration_seconds`` metric; its log lines carry the task id, workflow
    and stage (``core.logs``).
    """

    def register(fn: StageFn) -> Any:
        @functools.wraps(fn)
        async def run(
            task_id: str, workflow: str, stage_id: str, previous: Any = None
        ) -> dict[str, Any] | None:
            with log_context(task_id=task_id, workflow=workflow, stage=stage_id):
                return await _run(task_id, workflow, stage_id, previous)

        async def _run(
            task_id: str, workflow: str, stage_id: str, previous: Any
        ) -> dict[str, Any] | None:
            from actors import dag

            go, task = await _may_start(name, task_id, workflow, stage_id)
            if not go:
                return None
            state = resources().state
            await state.stage_event(task_id, stage_id, "running")
            started = time.perf_counter()
            try:
                item = dag.dag_item(previous)
                if item is not None:
                    await dag.run_stage(fn, task_id, workflow, stage_id, item)
                    result = None
                else:
                    result = await fn(
                        task_id,
                        workflow,
                        stage_id,
                        await _input(task_id, workflow, stage_id, previous),
                    )
            except BaseException as exc:
                outcome = "failed" if isinstance(exc, StageError) else "error"
                STAGE_DURATION.labels(name, outcome).observe(time.perf_counter() - started)
                await state.stage_event(task_id, stage_id, "error")
                raise
            STAGE_DURATION.labels(name, "ok").observe(time.perf_counter() - started)
            await state.stage_event(task_id, stage_id, "done")
            if task is not None and (item is None or item < 0):
                from actors import events  # an actor module: imported once a broker is set

                # A whole stage (not one foreach item) ended: a `progress` event, if wanted.
                await events.emit(resources(), task, "progress", f"progress:{stage_id}")
            return result if _piped() else None

        actor = dramatiq.actor(actor_name=name, queue_name=queue, throws=(StageError,), **options)(
            run
        )
        STAGE_QUEUES[name] = queue
        if outputs is not None:
            STAGE_OUTPUTS[name] = outputs
        return actor

    return register


#: Actors that run after a task has ended: they are never stopped by its ending.
_AFTER_END_ACTORS = frozenset({"task.callback"})
#: Actors whose run does not make a queued task ``running``.
_BEFORE_START_ACTORS = frozenset({"task.validate"})


async def _may_start(
    actor: str, task_id: str, workflow: str, stage_id: str
) -> tuple[bool, Task | None]:
    """Whether this stage should run now (when not, the rest of the run is dropped), and the
    task's row when this is a main stage of an active task (events are sent about it).

    * The first main stage to start, other than ``task.validate`` (a quick check before the
      task waits in, say, a GPU queue), moves the task from ``queued`` to ``running`` and
      sends the ``started`` event when the client asked for it: a marketplace shows
      "queued" while its users' tasks wait for a GPU.

    * A main stage of a task that has already ended ``cancelled`` or ``failed`` (a cancel, or
      another branch's failure, came while its message waited in a queue) does not run, and
      the stages after it in a pipeline are not queued: nothing more is computed or sent for a
      task whose client has been told it ended. Handlers (``on_failure``, ``finally``) and the
      callback run after the end by design.
    * A stage of a task past its workflow's deadline does not start: the task ends ``failed``
      with code ``timeout`` through ``task.fail`` (which tells the client), and this message
      is acked, not dead-lettered (nothing is wrong with it to inspect or retry).
    """
    if actor in _AFTER_END_ACTORS:
        return True, None
    res = resources()
    plan = res.plans.get(workflow)
    if plan is not None and any(
        step.stage.id == stage_id for step in plan.handler_steps(failed=True)
    ):
        return True, None
    task = await get_task(res.db, task_id)
    if task is None:
        return True, None  # the stage itself says what a missing task means
    status = TaskStatus(task.status)
    if status in (TaskStatus.CANCELLED, TaskStatus.FAILED):
        log.info("task %s is %s: stage %s dropped", task_id, status, stage_id)
        _stop_pipeline()
        return False, None
    if status.terminal or plan is None:
        return True, None
    deadline_s = plan.workflow.deadline(res.settings.task_deadline_s)
    if (utcnow() - task.created_at).total_seconds() <= deadline_s:
        if (
            status == TaskStatus.QUEUED
            and actor not in _BEFORE_START_ACTORS
            and await start_task(res.db, task_id)
        ):
            from actors import events

            await events.emit(res, task, "started", "started")
        return True, task
    log.warning(
        "task %s passed its deadline of %g s before stage %s", task_id, deadline_s, stage_id
    )
    fail = res.broker.get_actor("task.fail")
    message = fail.message(
        task_id,
        stage_id,
        "timeout",
        f"the task did not finish within its deadline of {deadline_s:g} s",
    )
    await asyncio.to_thread(res.broker.enqueue, message)
    _stop_pipeline()
    return False, None


def _stop_pipeline() -> None:
    """Make Dramatiq's Pipelines middleware queue nothing after the current message."""
    message = CurrentMessage.get_current_message()
    if message is not None:
        message.options.pop("pipe_target", None)


def _piped() -> bool:
    """Whether a next stage will receive this stage's result (else nothing keeps it)."""
    message = CurrentMessage.get_current_message()
    return message is None or message.options.get("pipe_target") is not None


async def _input(task_id: str, workflow: str, stage_id: str, previous: Any) -> Any:
    """In a pipeline, a stage (a handler, say) with an ``input:`` mapping gets it evaluated;
    any other gets the previous stage's result, as Dramatiq's pipeline passes it."""
    res = resources()
    plan = res.plans.get(workflow)
    if plan is None or stage_id not in plan._index or not plan.step(stage_id).stage.input:
        return previous
    from actors import dag

    task = await get_task(res.db, task_id)
    if task is None:
        return previous
    return await dag.stage_input(res, plan, plan.step(stage_id), task, -1, None)
