"""The no-op stage of bench/runtime.py's workflow ``bench-noop``, registered the supported
way: ``ACTOR_MODULES=bench.runtime_stages.noop`` with the repository on ``PYTHONPATH``, and
``WORKFLOWS_DIRS`` pointing at ``bench/runtime_stages/workflows``."""

from __future__ import annotations

from typing import Any

from actors.context import StageContext
from actors.registry import stage


@stage("bench.noop", outputs=())
async def noop(ctx: StageContext, given: Any = None) -> dict[str, Any]:
    """Does nothing: what is left of a stage is aimarket's own per-stage work."""
    return {}
