"""Stage actors for the DAG tests, loaded by workers through ACTOR_MODULES (the way an
operator adds local stages). Each counts its runs in Redis so a test can prove a stage ran
exactly as often as it should."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dramatiq.middleware import CurrentMessage

from actors.context import StageContext
from actors.registry import stage
from actors.resources import resources
from core.state import OUTAGE_ERRORS


async def count(task_id: str, stage_id: str) -> int:
    """Increment and return how many times this stage started for this task."""
    state = resources().state
    redis = getattr(state, "redis", None)
    if redis is None:
        return 0
    try:
        return int(await redis.incr(f"aimarket:test:runs:{task_id}:{stage_id}"))
    except OUTAGE_ERRORS:
        return 0  # tests/test_redis_outage.py runs these stages with Redis stopped


@stage("test.echo", outputs=("value", "runs"))
async def echo(ctx: StageContext, given: Any = None) -> dict[str, Any]:
    """Returns its input as ``value``."""
    task_id, stage_id = ctx.task_id, ctx.stage_id
    return {"value": given, "runs": await count(task_id, stage_id)}


@stage("test.flaky", outputs=("attempt",))
async def flaky(ctx: StageContext, given: Any = None) -> dict[str, Any]:
    """Fails its first attempt with a connection error, then succeeds."""
    task_id, stage_id = ctx.task_id, ctx.stage_id
    await count(task_id, stage_id)
    message = CurrentMessage.get_current_message()
    attempt = (message.options.get("retries", 0) if message else 0) + 1
    if attempt == 1:
        raise ConnectionError("the first attempt always fails")
    return {"attempt": attempt}


@stage("test.boom")
async def boom(ctx: StageContext, given: Any = None) -> dict[str, Any]:
    task_id, stage_id = ctx.task_id, ctx.stage_id
    await count(task_id, stage_id)
    raise RuntimeError("boom")


@stage("test.sleep")
async def sleep(ctx: StageContext, given: Any = None) -> dict[str, Any]:
    task_id, stage_id = ctx.task_id, ctx.stage_id
    await count(task_id, stage_id)
    await asyncio.sleep(float((given or {}).get("seconds", 5)))
    return {}


@stage("test.fail_while_marker")
async def fail_while_marker(ctx: StageContext, given: Any = None) -> dict[str, Any]:
    """Fails (a RuntimeError) while the file ``given["marker"]`` exists: a cause an operator
    can fix (remove the file) before retrying the dead-lettered message."""
    task_id, stage_id = ctx.task_id, ctx.stage_id
    await count(task_id, stage_id)
    message = CurrentMessage.get_current_message()
    attempt = (message.options.get("retries", 0) if message else 0) + 1
    marker = str((given or {}).get("marker") or "")
    if marker and await asyncio.to_thread(Path(marker).exists):
        # The attempt in the message tells a test which attempt's error a dead letter shows.
        raise RuntimeError(f"marker {marker} is present (attempt {attempt})")
    return {"marker": marker}
