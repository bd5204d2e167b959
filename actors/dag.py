"""The DAG runtime: runs a workflow's stages as their ``needs`` allow, fans ``foreach`` stages
out and joins them back, and skips stages whose ``when`` is false.

Dramatiq's group callbacks cannot do this (they never fire when a child fails and carry no
results), so the join is ours: every stage run is a row in ``stage_runs``; a finished stage
calls :func:`advance`, which queues each stage whose needs are all settled, and only the
caller whose INSERT created a stage's row queues it. A message delivered twice, or two
branches finishing at the same instant, therefore queue a join once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import dramatiq

from actors.context import StageContext, StageFn
from actors.resources import Resources
from core.errors import StageError
from db import stage_runs
from db.models import RunStatus, Task, TaskStatus
from db.stage_runs import STAGE
from db.tasks import get_task
from workflows.compiler import Plan, Step
from workflows.expressions import ExpressionError, evaluate, truthy

log = logging.getLogger(__name__)

#: Marks the last argument of a DAG stage message (pipelines pass the previous result there).
MARK = "$dag"
#: Most items one foreach may fan out to.
MAX_ITEMS = 1000
#: Row id of the "finally handlers were queued" marker.
FINALLY = "$finally"


_ITEM: contextvars.ContextVar[int] = contextvars.ContextVar("aimarket_foreach_item", default=-1)


def current_item() -> int:
    """The foreach item the running stage works on, -1 outside a foreach. Lets a stage name
    what it writes per item (two items of one stage must not share a key)."""
    return _ITEM.get()


def dag_arg(item: int) -> dict[str, Any]:
    return {MARK: {"item": item}}


def dag_item(arg: Any) -> int | None:
    """The foreach item (-1 for a whole stage) when ``arg`` marks a DAG message, else None."""
    if isinstance(arg, dict) and MARK in arg:
        return int(arg[MARK]["item"])
    return None


async def send(res: Resources, message: dramatiq.Message[Any]) -> None:
    # A blocking publish: off the event loop the actors share.
    await asyncio.to_thread(res.broker.enqueue, message)


async def context(res: Resources, task: Task, item: int) -> dict[str, Any]:
    """What expressions see: the input, settled stages' outputs, and the foreach item."""
    outputs: dict[str, Any] = {}
    for run in await stage_runs.runs(res.db, task.id):
        if run.item == STAGE and run.status in (RunStatus.SUCCEEDED, RunStatus.SKIPPED):
            outputs[run.stage_id] = run.output
    ctx: dict[str, Any] = {"input": task.input, "stages": outputs}
    if item >= 0:
        ctx["index"] = item
    return ctx


def _eval(expression: str, ctx: dict[str, Any], what: str) -> Any:
    try:
        return evaluate(expression, ctx)
    except ExpressionError as exc:
        raise StageError("expression_failed", f"{what}: {exc}") from None


async def stage_input(
    res: Resources, plan: Plan, step: Step, task: Task, item: int, items: list[Any] | None
) -> Any:
    """The value handed to the actor: its ``input:`` mapping evaluated, else the output of its
    only upstream stage (as a pipeline would pass it), else None."""
    stage = step.stage
    ctx = await context(res, task, item)
    if items is not None and item >= 0:
        ctx["item"] = items[item]
    if stage.input:
        return {
            name: _eval(expr, ctx, f"input.{name} of {stage.id}")
            for name, expr in stage.input.items()
        }
    if len(stage.needs) == 1:
        return ctx["stages"].get(stage.needs[0])
    return None


async def foreach_items(res: Resources, plan: Plan, step: Step, task: Task) -> list[Any]:
    ctx = await context(res, task, STAGE)
    assert step.stage.foreach is not None
    value = _eval(step.stage.foreach, ctx, f"foreach of {step.stage.id}")
    if not isinstance(value, list):
        raise StageError(
            "foreach_not_a_list",
            f"foreach of {step.stage.id} gave {type(value).__name__}, not a list",
        )
    if len(value) > MAX_ITEMS:
        raise StageError("foreach_too_long", f"foreach of {step.stage.id} gave {len(value)} items")
    return value


async def advance(res: Resources, plan: Plan, task_id: str) -> None:
    """Queue every stage that its finished upstream stages have unblocked; finish the task
    when nothing is left. Safe to call any number of times, from any worker."""
    while True:
        task = await get_task(res.db, task_id)
        if task is None:
            return
        if task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            return  # task.fail (or the cancel) runs what is left: the handlers
        # A task that task.aggregate has already marked succeeded still runs the stages after
        # it (a notification, say); the finally handlers follow when all are done.
        status = {
            r.stage_id: RunStatus(r.status)
            for r in await stage_runs.runs(res.db, task_id)
            if r.item == STAGE
        }
        changed = False
        for step in plan.steps:
            stage = step.stage
            if stage.id in status or not all(
                n in status and status[n].settled for n in stage.needs
            ):
                continue
            if not await stage_runs.claim(res.db, task_id, stage.id, RunStatus.QUEUED):
                continue  # another worker is queueing it
            ctx = await context(res, task, STAGE)
            if stage.when and not truthy(_eval(stage.when, ctx, f"when of {stage.id}")):
                await stage_runs.finish(res.db, task_id, stage.id, STAGE, RunStatus.SKIPPED)
                changed = True
                continue
            if stage.foreach:
                items = await foreach_items(res, plan, step, task)
                if not items:
                    await stage_runs.finish(
                        res.db, task_id, stage.id, STAGE, RunStatus.SUCCEEDED, []
                    )
                    changed = True
                    continue
                width = stage.max_concurrency or len(items)
                await stage_runs.add_items(res.db, task_id, stage.id, len(items), width)
                for i in range(min(width, len(items))):
                    await send(res, step.message(plan.workflow.name, task_id, dag_arg(i)))
            else:
                await send(res, step.message(plan.workflow.name, task_id, dag_arg(STAGE)))
        if not changed:
            break
    await _finish_if_done(res, plan, task_id)


async def _finish_if_done(res: Resources, plan: Plan, task_id: str) -> None:
    runs = {
        r.stage_id: RunStatus(r.status)
        for r in await stage_runs.runs(res.db, task_id)
        if r.item == STAGE
    }
    if not all(runs.get(s.stage.id, RunStatus.PENDING).settled for s in plan.steps):
        return
    # Normally a stage (task.aggregate) has ended the task with its outputs; a workflow
    # without one still ends, so no task stays running forever.
    if not await res.lifecycle.settle(task_id):
        return  # failed or cancelled: task.fail runs the handlers
    if plan.finally_ and await stage_runs.claim(res.db, task_id, FINALLY, RunStatus.SUCCEEDED):
        await asyncio.to_thread(plan.handlers(res.broker, task_id, failed=False).run)


async def item_done(res: Resources, plan: Plan, step: Step, task_id: str) -> None:
    """After a foreach item: queue the next pending one, or join the items when all ended."""
    nxt = await stage_runs.queue_next_item(res.db, task_id, step.stage.id)
    if nxt is not None:
        await send(res, step.message(plan.workflow.name, task_id, dag_arg(nxt)))
        return
    runs = [r for r in await stage_runs.runs(res.db, task_id) if r.stage_id == step.stage.id]
    items = sorted((r for r in runs if r.item >= 0), key=lambda r: r.item)
    if all(RunStatus(r.status) == RunStatus.SUCCEEDED for r in items):
        joined = [r.output for r in items]
        # Only the finisher whose UPDATE ends the stage row goes on: the join fires once.
        if await stage_runs.finish(
            res.db, task_id, step.stage.id, STAGE, RunStatus.SUCCEEDED, joined
        ):
            await advance(res, plan, task_id)


async def run_stage(fn: StageFn, ctx: StageContext, item: int) -> None:
    """Run one DAG stage (or one foreach item) and move the run forward."""
    res, task_id, stage_id = ctx.res, ctx.task_id, ctx.stage_id
    plan = res.plans[ctx.workflow]
    step = plan.step(stage_id)
    task = await ctx.task_row()
    if task is None or task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        return  # the task ended (another branch failed, or it was cancelled)
    if not await stage_runs.start(res.db, task_id, stage_id, item):
        # Already ran: a duplicate delivery. Advancing again is harmless and covers a worker
        # that died between recording the result and queueing what came next.
        await (item_done(res, plan, step, task_id) if item >= 0 else advance(res, plan, task_id))
        return
    items = await foreach_items(res, plan, step, task) if item >= 0 else None
    value = await stage_input(res, plan, step, task, item, items)
    token = _ITEM.set(item)
    try:
        result = await fn(ctx, value)
    finally:
        _ITEM.reset(token)
    if item >= 0:
        await stage_runs.finish(res.db, task_id, stage_id, item, RunStatus.SUCCEEDED, result)
        await item_done(res, plan, step, task_id)
    else:
        await stage_runs.finish(res.db, task_id, stage_id, STAGE, RunStatus.SUCCEEDED, result)
        await advance(res, plan, task_id)
