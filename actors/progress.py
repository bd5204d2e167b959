"""Decoding progress from audiocraft's callback (called in the model's thread at every step)
to the task's short-lived state, at a bounded rate; and the stop of a cancelled generation.

The callback is the one place where code of ours runs inside audiocraft's decoding loop, so
it is where a cancel takes effect: each publish of progress also reads the task's cancel mark
(``State.is_cancelled``), at most every ``MIN_INTERVAL_S``, into a local flag; the next step
that sees the flag raises :class:`TaskCancelled`, which unwinds the model's ``generate`` (its
lock is released by the ``with``) and ends the stage. No step ever waits on the state.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from core.backends import State
from core.errors import StageError

#: Seconds between two published updates of one task (the last step is always published),
#: and so between two reads of its cancel mark.
MIN_INTERVAL_S = 0.25


class TaskCancelled(StageError):
    """The task was cancelled while this stage ran it: the stage stops, and nothing retries
    it (the task has already ended ``cancelled``; the cancel told the client)."""

    def __init__(self, task_id: str) -> None:
        super().__init__("cancelled", f"task {task_id} was cancelled")
        self.task_id = task_id


#: Called on the event loop with a milestone (0..1) that decoding has just passed.
Milestone = Callable[[float], Awaitable[None]]


class ProgressReporter:
    def __init__(
        self,
        state: State,
        task_id: str,
        stage_id: str,
        loop: asyncio.AbstractEventLoop,
        on_milestone: Milestone | None = None,
        milestones: tuple[float, ...] = (),
    ) -> None:
        self.state, self.task_id, self.stage_id, self.loop = state, task_id, stage_id, loop
        self._on_milestone = on_milestone
        self._milestones = sorted(milestones) if on_milestone is not None else []
        self._last = 0.0
        self._pending: Future[Any] | None = None
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether the task is known to be cancelled (set from any thread)."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def __call__(self, done: int, total: int) -> None:
        if self._cancelled.is_set():
            raise TaskCancelled(self.task_id)
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - self._last < MIN_INTERVAL_S:
            return
        if self._pending is not None and not self._pending.done() and not final:
            return  # the previous update is still on its way: skip rather than queue up
        self._last = now
        fraction = min(1.0, done / total) if total > 0 else 0.0
        self._pending = asyncio.run_coroutine_threadsafe(self._publish(fraction), self.loop)

    async def _publish(self, fraction: float) -> None:
        await self.state.set_progress(self.task_id, self.stage_id, fraction)
        if await self.state.is_cancelled(self.task_id):
            self._cancelled.set()
            return
        passed = [m for m in self._milestones if fraction >= m]
        if passed and self._on_milestone is not None:
            # Only the highest one passed since the last update: no burst of stale events.
            self._milestones = [m for m in self._milestones if m > passed[-1]]
            await self._on_milestone(passed[-1])
