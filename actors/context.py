"""The typed context a stage runs with (see ``actors/registry.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from actors.resources import Resources
from core.errors import TaskGone
from db.models import Task, TaskStatus
from db.tasks import get_task
from workflows.compiler import Plan, Step


@dataclass
class StageContext:
    """What a stage knows about the run it is part of.

    The task's row is read at most once per stage run: by the decision that let the stage
    run (``Lifecycle.begin``), or on the first :meth:`task_row` of a stage that needs it (a
    pipeline stage decides without it). Stages and their helpers take it from here.
    """

    task_id: str
    workflow: str
    stage_id: str
    res: Resources
    #: The row, once read; ``_read`` tells a row not read yet from a task that is gone.
    _task: Task | None = field(default=None, repr=False)
    _read: bool = field(default=False, repr=False)

    @classmethod
    def of(
        cls, task_id: str, workflow: str, stage_id: str, res: Resources, task: Task | None
    ) -> StageContext:
        return cls(task_id, workflow, stage_id, res, task, task is not None)

    async def task_row(self) -> Task | None:
        """The task's row (None: it no longer exists), read on first use."""
        if not self._read:
            self._task, self._read = await get_task(self.res.db, self.task_id), True
        return self._task

    async def active_task(self) -> Task:
        """The task's row; raises TaskGone when it is missing or has already ended."""
        task = await self.task_row()
        if task is None or TaskStatus(task.status).terminal:
            raise TaskGone(self.task_id, task.status if task else None)
        return task

    @property
    def plan(self) -> Plan | None:
        return self.res.plans.get(self.workflow)

    @property
    def step(self) -> Step | None:
        plan = self.plan
        return plan.step(self.stage_id) if plan is not None and plan.has(self.stage_id) else None


StageFn = Callable[[StageContext, Any], Awaitable[dict[str, Any]]]
