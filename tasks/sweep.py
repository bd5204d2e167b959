"""The sweep: finds tasks whose row says queued or running but that will not end by
themselves, and ends or resumes them, so every accepted task ends and its client is told.

One pass looks at the active tasks old enough to matter:

* **past its deadline** (``created_at`` + the workflow's ``deadline_s``, else
  ``TASK_DEADLINE_S``): ended ``failed`` with code ``timeout`` (first ending wins), marked
  cancelled in the short-lived state so a running generation stops at its next decoding step,
  and the client is told as ``task.fail`` tells it (the workflow's handlers, else the callback);
* **no sign of work** for ``STUCK_AFTER_S`` (no stage started or ended, nothing published
  since it was created: an API that died between its commit and its publish, a message lost
  with a queue) and no stage running, and nothing waiting in the queue its next stage reads:
  resumed once (``Plan.resume``; stages are safe to repeat), which is remembered; still no
  sign of work ``STUCK_AFTER_S`` after that resume: ended ``failed`` with code ``stuck``;

and the tasks that **ended without their client being told**: ended more than
``TELL_AFTER_S`` ago (within a day), by a workflow that tells its client with
``task.callback``, with a callback URL, and no try of that callback on record (an API that
died between ending the task, by a cancel or this sweep, and queueing its callback): the
callback is queued (``told``); and those whose callback's last try asked for another that
has not come ``TELL_AFTER_S`` past its time (its message was lost: a queue purged by hand; an
embedded restart queues its waiting tries itself, aimarket/embedded.py): the try is queued
(``resent``). Receivers drop a duplicate
by its ``webhook-id``.

A stage that is running counts as work however long it takes (a long generation is not
stuck): the deadline bounds it. Passes run in every API process every ``SWEEP_INTERVAL_S``,
one at a time across processes (a Redis lock; a process lock without Redis).

While Redis is unreachable the sweep still runs (each process under its own lock: every
action is safe to repeat), ends tasks past their deadline and tells untold clients, but judges
no task stuck: it cannot see which stages are running.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import dramatiq
import msgspec

from core.backends import State
from core.metrics import SWEEP_ACTIONS, QueueCounts
from core.settings import Settings
from core.state import OUTAGE_ERRORS
from db import stage_runs
from db.callbacks import pending_deliveries
from db.engine import Database
from db.models import RunStatus, StageRun, Task
from db.tasks import stale_active_tasks, untold_ended_tasks
from tasks.lifecycle import Lifecycle
from workflows.compiler import CALLBACK_ACTOR, Plan

log = logging.getLogger(__name__)

LOCK_KEY = "aimarket:sweep:lock"
RESUMED_KEY = "aimarket:sweep:resumed:{}"
#: Most tasks one pass looks at (oldest first); the next pass takes the rest.
BATCH = 500
#: How long the mark of a resume is kept: longer than any task may live.
RESUMED_TTL_S = 7 * 86400
#: An ended task with no try of its final callback is told once it ended this long ago (its
#: callback is normally tried within seconds), if it ended within the last TELL_WINDOW_S.
TELL_AFTER_S = 300.0
TELL_WINDOW_S = 86400.0
#: A delivery's next try is looked for in the last RESEND_WINDOW_S of due times: longer than
#: the longest wait of any sane CALLBACK_RETRY_SCHEDULE.
RESEND_WINDOW_S = 2 * 86400.0
#: The error of a task whose first message could not be published (POST /v1/tasks said 503).
NOT_ACCEPTED = "queue_unavailable"

Kind = Literal["timeout", "resumed", "stuck", "told", "resent"]


class Action(msgspec.Struct, kw_only=True):
    """One thing a pass did to one task."""

    task_id: str
    workflow: str
    action: Kind
    reason: str


class SweepReport(msgspec.Struct, kw_only=True):
    #: False when another sweep held the lock (nothing was looked at).
    ran: bool
    #: Active tasks old enough to be looked at.
    checked: int = 0
    actions: list[Action] = msgspec.field(default_factory=list)


class Marks(Protocol):
    """The sweep's own short-lived records: its lock and the tasks it has resumed."""

    async def acquire(self, ttl_s: float) -> str | None: ...
    async def release(self, token: str) -> None: ...
    async def resumed_at(self, task_id: str) -> float | None: ...
    async def set_resumed(self, task_id: str, at: float) -> None: ...
    async def close(self) -> None: ...


# Deletes the lock only when it is still ours (it may have expired and been taken since).
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""


class RedisMarks:
    """Marks in Redis, shared by every API process: ``SET NX EX`` is the lock. While Redis
    cannot be reached, the lock is this process's own (see the module doc)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._local = MemoryMarks()

    async def acquire(self, ttl_s: float) -> str | None:
        token = uuid.uuid4().hex
        try:
            taken = await self.redis.set(LOCK_KEY, token, nx=True, ex=max(1, int(ttl_s)))
        except OUTAGE_ERRORS as exc:
            log.warning("sweep: Redis unreachable (%s); sweeping under this process's lock", exc)
            local = await self._local.acquire(ttl_s)
            return None if local is None else _LOCAL + local
        return token if taken else None

    async def release(self, token: str) -> None:
        if token.startswith(_LOCAL):
            await self._local.release(token)
            return
        await self.redis.eval(_RELEASE, 1, LOCK_KEY, token)

    async def resumed_at(self, task_id: str) -> float | None:
        value = await self.redis.get(RESUMED_KEY.format(task_id))
        return float(value) if value is not None else None

    async def set_resumed(self, task_id: str, at: float) -> None:
        await self.redis.set(RESUMED_KEY.format(task_id), str(at), ex=RESUMED_TTL_S)

    async def close(self) -> None:
        await self.redis.aclose()


#: The start of a lock token of this process's own lock (RedisMarks while Redis is down).
_LOCAL = "local:"


class MemoryMarks:
    """Marks in this process (embedded mode: one process runs everything)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resumed: dict[str, float] = {}

    async def acquire(self, ttl_s: float) -> str | None:
        return uuid.uuid4().hex if self._lock.acquire(blocking=False) else None

    async def release(self, token: str) -> None:
        self._lock.release()

    async def resumed_at(self, task_id: str) -> float | None:
        return self._resumed.get(task_id)

    async def set_resumed(self, task_id: str, at: float) -> None:
        self._resumed[task_id] = at

    async def close(self) -> None:
        return None


def make_marks(settings: Settings) -> Marks:
    url = settings.redis_url
    return RedisMarks(url) if url is not None else MemoryMarks()


@dataclass
class Sweeper:
    db: Database
    state: State
    broker: dramatiq.Broker
    plans: dict[str, Plan]
    settings: Settings
    marks: Marks
    #: Every ending goes through it (and so tells the client the same way).
    lifecycle: Lifecycle
    #: (ready, delayed, dead) per queue; blocking (it may ask RabbitMQ).
    queue_counts: Callable[[], QueueCounts]
    _counts: QueueCounts | None = field(default=None, repr=False)

    async def run_once(self, *, now: float | None = None, wait_s: float = 0.0) -> SweepReport:
        """One pass, if no other sweep is running (waits up to ``wait_s`` for it to end)."""
        give_up = time.monotonic() + wait_s
        ttl = max(60.0, 2 * self.settings.sweep_interval_s)
        while (token := await self.marks.acquire(ttl)) is None:
            if time.monotonic() >= give_up:
                return SweepReport(ran=False)
            await asyncio.sleep(0.1)
        try:
            return await self.sweep(time.time() if now is None else now)
        finally:
            await self.marks.release(token)

    async def loop(self) -> None:
        """Sweep every SWEEP_INTERVAL_S until cancelled (the API's lifespan runs this)."""
        interval = self.settings.sweep_interval_s
        while True:
            # Jitter, so the processes of a deployment do not all wake at the same instant.
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            try:
                await self.run_once()
            except Exception:
                log.exception("sweep failed; trying again in %.0f s", interval)

    async def sweep(self, now: float) -> SweepReport:
        """Look at every active task old enough to be late or stuck, then at the tasks that
        ended without their client being told (the caller holds the lock)."""
        self._counts = None
        youngest = min([self.settings.stuck_after_s, *self._deadlines()])
        candidates = await stale_active_tasks(
            self.db, datetime.fromtimestamp(now - youngest, UTC), BATCH
        )
        report = SweepReport(ran=True, checked=len(candidates))
        for task in candidates:
            await self._act(report, task, self._check(task, now))
        untold = await untold_ended_tasks(
            self.db,
            datetime.fromtimestamp(now - TELL_WINDOW_S, UTC),
            datetime.fromtimestamp(now - TELL_AFTER_S, UTC),
            BATCH,
        )
        for task in untold:
            await self._act(report, task, self._tell(task))
        overdue = await pending_deliveries(
            self.db,
            datetime.fromtimestamp(now - RESEND_WINDOW_S, UTC),
            datetime.fromtimestamp(now - TELL_AFTER_S, UTC),
            BATCH,
        )
        for task, _ in overdue:
            reason = "the next try of its callback never came"
            await self._act(report, task, self._tell(task, "resent", reason))
        return report

    @staticmethod
    async def _act(
        report: SweepReport, task: Task, checking: Coroutine[Any, Any, Action | None]
    ) -> None:
        """Run one task's check; what it did goes in the report, the metric and the log. A
        failure is logged and the pass goes on with the next task."""
        try:
            action = await checking
        except Exception:
            log.exception("sweep: could not check task %s", task.id)
            return
        if action is None:
            return
        report.actions.append(action)
        SWEEP_ACTIONS.labels(action.action).inc()
        log.warning(
            "sweep: task %s (%s) %s: %s", task.id, task.workflow, action.action, action.reason
        )

    async def _tell(
        self,
        task: Task,
        kind: Kind = "told",
        reason: str = "",
    ) -> Action | None:
        """Queue the final callback of an ended task whose client was never told."""
        if task.error_code == NOT_ACCEPTED:
            return None  # its submission was answered 503: that client was told, and retries
        plan = self.plans.get(task.workflow)
        if plan is None or not plan.calls_back(task.status):
            return None
        if not task.callback_target(self.settings.marketplace_callback):
            return None
        callback = self.broker.get_actor(CALLBACK_ACTOR)
        if self._counts is None:
            self._counts = await asyncio.to_thread(self.queue_counts)
        if sum(self._counts.get(callback.queue_name, (0, 0, 0))[:2]) > 0:
            return None  # callbacks are waiting their turn: this one may be among them
        await self.lifecycle.tell_again(task.id, task.workflow)
        return Action(
            task_id=task.id,
            workflow=task.workflow,
            action=kind,
            reason=reason or f"ended {task.status} with no try of its callback on record",
        )

    def _deadlines(self) -> Iterable[float]:
        yield self.settings.task_deadline_s
        for plan in self.plans.values():
            yield plan.workflow.deadline(self.settings.task_deadline_s)

    def deadline_s(self, task: Task) -> float:
        return self.lifecycle.deadline_s(self.plans.get(task.workflow))

    async def _check(self, task: Task, now: float) -> Action | None:
        deadline_s = self.deadline_s(task)
        if now >= task.created_at.timestamp() + deadline_s:
            reason = f"not finished within its deadline of {deadline_s:g} s"
            return await self._end(task, "timeout", reason)
        plan = self.plans.get(task.workflow)
        if plan is None:
            return None  # a removed workflow: nothing to resume it with; the deadline ends it
        state = await self.state.get(task.id)
        if state.get("unavailable"):
            return None  # which stages run cannot be seen: only the deadline is judged
        events: dict[str, Any] = state.get("stages", {})
        runs = await stage_runs.runs(self.db, task.id) if plan.mode == "dag" else []
        if _running(events, runs):
            return None  # work in progress, however long: the deadline bounds it
        resumed = await self.marks.resumed_at(task.id)
        idle_s = now - _last_sign_of_work(task, events, runs, resumed)
        if idle_s < self.settings.stuck_after_s:
            return None
        if await self._waiting(plan, events, runs):
            return None  # its next message is in a queue behind others (or a retry delay)
        if resumed is None:
            await self.lifecycle.resume(task.id, task.workflow)
            await self.marks.set_resumed(task.id, now)
            return Action(
                task_id=task.id,
                workflow=task.workflow,
                action="resumed",
                reason=f"no sign of work for {idle_s:.0f} s",
            )
        reason = f"no sign of work for {idle_s:.0f} s, even after it was resumed"
        return await self._end(task, "stuck", reason)

    async def _waiting(self, plan: Plan, events: dict[str, Any], runs: list[StageRun]) -> bool:
        """Whether a queue the task's next stage reads holds messages (ready or delayed)."""
        queues = _next_queues(plan, events, runs)
        if not queues:
            return False
        if self._counts is None:  # read once per pass, off the event loop
            self._counts = await asyncio.to_thread(self.queue_counts)
        return any(sum(self._counts.get(q, (0, 0, 0))[:2]) > 0 for q in queues)

    async def _end(self, task: Task, code: Kind, reason: str) -> Action | None:
        """End the task ``failed`` with ``code`` and tell the client (Lifecycle.end_stopped)."""
        ended = await self.lifecycle.end_stopped(task.id, task.workflow, code, f"task {reason}")
        if not ended:
            return None  # it ended meanwhile: first ending wins
        return Action(task_id=task.id, workflow=task.workflow, action=code, reason=reason)

    async def close(self) -> None:
        await self.marks.close()


def _running(events: dict[str, Any], runs: list[StageRun]) -> bool:
    if any(isinstance(e, dict) and e.get("status") == "running" for e in events.values()):
        return True
    return any(RunStatus(r.status) == RunStatus.RUNNING for r in runs)


def _last_sign_of_work(
    task: Task, events: dict[str, Any], runs: list[StageRun], resumed: float | None
) -> float:
    """The latest instant anything happened to the task, in UNIX seconds."""
    times = [task.created_at.timestamp()]
    if task.started_at is not None:
        times.append(task.started_at.timestamp())
    times += [float(e["at"]) for e in events.values() if isinstance(e, dict) and "at" in e]
    for run in runs:
        times += [t.timestamp() for t in (run.started_at, run.finished_at) if t is not None]
    if resumed is not None:
        times.append(resumed)
    return max(times)


def _next_queues(plan: Plan, events: dict[str, Any], runs: list[StageRun]) -> set[str]:
    """The queues where the task's next message would wait."""
    if plan.mode == "pipeline":
        for step in (*plan.steps, *plan.finally_):
            event = events.get(step.stage.id)
            if not (isinstance(event, dict) and event.get("status") == "done"):
                return {step.queue}
        return set()
    if not runs:
        return {"default"}  # task.start (or task.resume) has not run yet
    waiting = (RunStatus.QUEUED, RunStatus.PENDING)
    return {
        plan.step(r.stage_id).queue
        for r in runs
        if plan.has(r.stage_id) and RunStatus(r.status) in waiting
    }
