"""Registration of stage actors under explicit dotted names, and the one path every stage
run takes.

A stage is an ``async def (ctx: StageContext, given) -> dict``: ``ctx`` carries the task's
row (read once, before the stage runs), its workflow's plan step and the worker's resources;
``given`` is the previous stage's result in a pipeline, or the stage's evaluated ``input:``.
Its small JSON result is what Dramatiq's pipeline appends to the next stage's arguments.
Raise :class:`core.errors.StageError` for failures that a retry cannot fix; anything else
is retried by the stage's retry policy.

The wrapper (:func:`stage`) asks the task lifecycle once whether the stage runs
(:meth:`tasks.lifecycle.Lifecycle.decide`), then runs it, recording the run in the task's
short-lived state and in ``aimarket_stage_duration_seconds``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors import dag
from actors.context import StageContext, StageFn
from actors.resources import resources
from core.errors import StageError
from core.logs import log_context
from core.metrics import STAGE_DURATION
from workflows.catalog import StageActor
from workflows.compiler import AFTER_OPTION

#: Every actor declared through this module, whichever broker was current at the time.
_DECLARED: list[dramatiq.Actor[Any, Any]] = []


def actor(
    *,
    actor_name: str,
    queue_name: str,
    actor_class: type[dramatiq.Actor[Any, Any]] = dramatiq.Actor,
    **options: Any,
) -> Callable[[Callable[..., Any]], dramatiq.Actor[Any, Any]]:
    """``dramatiq.actor`` that also records the actor, so :func:`declare_on` can declare it
    on a broker set up later."""

    def declare(fn: Callable[..., Any]) -> dramatiq.Actor[Any, Any]:
        made: dramatiq.Actor[Any, Any] = dramatiq.actor(
            actor_class=actor_class, actor_name=actor_name, queue_name=queue_name, **options
        )(fn)
        _DECLARED.append(made)
        return made

    return declare


def declare_on(broker: dramatiq.Broker) -> None:
    """Declare on ``broker`` every actor declared so far on another. Importing an actor
    module declares its actors on the broker of that moment, once per process: a module
    imported before the broker was set up (by a test, say), or a second broker (an app built
    twice), would otherwise leave ``broker`` without them, and so without their stages (the
    stage catalog is read off the broker)."""
    declared = set(broker.get_declared_actors())
    for known in _DECLARED:
        if known.actor_name not in declared:
            known.broker = broker
            broker.declare_actor(known)


def stage(
    name: str,
    *,
    queue: str = "default",
    outputs: tuple[str, ...] | None = None,
    **options: Any,
) -> Callable[[StageFn], StageActor]:
    """Register ``fn`` as the stage actor ``name`` on the current Dramatiq broker.

    ``outputs`` names the keys of the dict it returns, so workflows that read a key it does
    not have are refused when they load (``workflows/catalog.py`` reads it off the broker).

    Each run is recorded in the task's short-lived state (running, done or error), which
    ``GET /v1/tasks/{id}`` shows while the task is in flight, and in the
    ``aimarket_stage_duration_seconds`` metric; its log lines carry the task id, workflow
    and stage (``core.logs``).
    """

    def register(fn: StageFn) -> StageActor:
        @functools.wraps(fn)
        async def run(
            task_id: str, workflow: str, stage_id: str, previous: Any = None
        ) -> dict[str, Any] | None:
            with log_context(task_id=task_id, workflow=workflow, stage=stage_id):
                return await _run(name, fn, task_id, workflow, stage_id, previous)

        made = actor(
            actor_class=StageActor, actor_name=name, queue_name=queue, throws=(StageError,),
            **options,
        )(run)  # fmt: skip
        assert isinstance(made, StageActor)
        made.outputs = outputs
        return made

    return register


async def _run(
    name: str, fn: StageFn, task_id: str, workflow: str, stage_id: str, previous: Any
) -> dict[str, Any] | None:
    res = resources()
    message = CurrentMessage.get_current_message()
    options = message.options if message is not None else {}
    decision = await res.lifecycle.begin(name, task_id, workflow, stage_id, options)
    if not decision.runs:
        _stop_pipeline()  # nothing after this stage is queued for an ended task
        return None
    ctx = StageContext.of(task_id, workflow, stage_id, res, decision.task)
    state = res.state
    started = time.perf_counter()
    item = dag.dag_item(previous)
    try:
        if item is not None:
            await dag.run_stage(fn, ctx, item)
            result = None
        else:
            result = await fn(ctx, await _input(ctx, previous))
    except BaseException as exc:
        outcome = "failed" if isinstance(exc, StageError) else "error"
        STAGE_DURATION.labels(name, outcome).observe(time.perf_counter() - started)
        await state.stage_event(task_id, stage_id, "error")
        raise
    STAGE_DURATION.labels(name, "ok").observe(time.perf_counter() - started)
    if not _next_records_done(stage_id):
        await state.stage_event(task_id, stage_id, "done")
    if decision.progress and (item is None or item < 0):
        # A whole main stage (not one foreach item) ended: the `progress` event.
        task = await ctx.task_row()
        if task is not None:
            await res.lifecycle.stage_ended(task, stage_id)
    return result if _piped() else None


def _next_records_done(stage_id: str) -> bool:
    """Whether the next stage of this pipeline records this one ``done`` as it starts (its
    message names this stage AFTER_OPTION): one state write per stage instead of two."""
    message = CurrentMessage.get_current_message()
    target = message.options.get("pipe_target") if message is not None else None
    return target is not None and target.get("options", {}).get(AFTER_OPTION) == stage_id


def _stop_pipeline() -> None:
    """Make Dramatiq's Pipelines middleware queue nothing after the current message."""
    message = CurrentMessage.get_current_message()
    if message is not None:
        message.options.pop("pipe_target", None)


def _piped() -> bool:
    """Whether a next stage will receive this stage's result (else nothing keeps it)."""
    message = CurrentMessage.get_current_message()
    return message is None or message.options.get("pipe_target") is not None


async def _input(ctx: StageContext, previous: Any) -> Any:
    """In a pipeline, a stage (a handler, say) with an ``input:`` mapping gets it evaluated;
    any other gets the previous stage's result, as Dramatiq's pipeline passes it."""
    step = ctx.step
    if step is None or not step.stage.input:
        return previous
    task, plan = await ctx.task_row(), ctx.plan
    if task is None or plan is None:
        return previous
    return await dag.stage_input(ctx.res, plan, step, task, -1, None)
