"""Decoding progress from audiocraft's callback (called in the model's thread at every step)
to the task's short-lived state, at a bounded rate."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

from aimarket.backends import State

#: Seconds between two published updates of one task (the last step is always published).
MIN_INTERVAL_S = 0.25


class ProgressReporter:
    def __init__(
        self, state: State, task_id: str, stage_id: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.state, self.task_id, self.stage_id, self.loop = state, task_id, stage_id, loop
        self._last = 0.0
        self._pending: Future[Any] | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - self._last < MIN_INTERVAL_S:
            return
        if self._pending is not None and not self._pending.done() and not final:
            return  # the previous update is still on its way: skip rather than queue up
        self._last = now
        fraction = min(1.0, done / total) if total > 0 else 0.0
        coro = self.state.set_progress(self.task_id, self.stage_id, fraction)
        self._pending = asyncio.run_coroutine_threadsafe(coro, self.loop)
