"""What POST /v1/tasks checks before it stores anything: a per-user rate limit and quota of
active tasks (429), and back-pressure from the depth of the queues a workflow uses (503).

With Redis (REDIS_HOST) the per-user counters live there, each check one Lua script, so every
API process shares them atomically; in embedded mode (no Redis) they live in this process.
Keys: ``aimarket:rate:<user>`` (a GCRA "theoretical arrival time", expires when the user's
budget is full again) and ``aimarket:active:<user>`` (a sorted set of task ids scored by
the time the entry expires; the key expires with its newest entry).

The active set is not updated by the many places a task can end (workers, the cancel route,
the sweep): when a user looks full, the ids are looked up in the database and those that have
ended are dropped. An entry also expires on its own after the longest task deadline, so none
can leak for good.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import NoReturn, Protocol, cast

import anyio
import anyio.to_thread
import dramatiq
import redis.asyncio as aioredis
import redis.exceptions
from sqlalchemy import select

from api.errors import ApiError
from core.backends import State
from core.metrics import TASKS_REFUSED, QueueCounts
from core.settings import Settings
from db.engine import Database
from db.models import Task, TaskStatus
from workflows.compiler import Plan
from workflows.spec import Workflow

log = logging.getLogger(__name__)

PREFIX = "aimarket"
#: Retry-After (s) of ``too_many_active_tasks``. When a task ends cannot be known (a short
#: sound, or minutes behind a deep queue), so the client looks again soon: a retry costs one
#: Redis script and, while the user is still full, one indexed read of at most the quota's ids.
ACTIVE_RETRY_S = 5
#: How long one reading of the queue depths is used (s): reading them opens a RabbitMQ
#: connection and declares each queue passively, too slow for every request.
DEPTH_TTL_S = 2.0
#: Retry-After (s) of ``queue_full``, spread by +-QUEUE_FULL_JITTER_S so the clients refused
#: together do not all come back in the same second.
QUEUE_FULL_RETRY_S = 30
QUEUE_FULL_JITTER_S = 10
#: An active entry whose task has no row may be one whose insert is still committing: it is
#: dropped only once it is older than this (s).
UNSTORED_GRACE_S = 60.0
#: Active entries outlive the longest task deadline by this much (s); past its deadline a
#: task is ended by the sweep, so its entry is never the only thing holding a slot.
ENTRY_MARGIN_S = 300.0


class Backend(Protocol):
    """Where the per-user counters live (Redis, or this process)."""

    async def take(self, user_id: str, interval_s: float, burst: int) -> float:
        """Spend one submission of the user's budget: 0 when allowed, else the seconds until
        one is allowed (nothing is spent then)."""
        ...

    async def acquire(
        self, user_id: str, task_id: str, quota: int, ttl_s: float
    ) -> dict[str, float] | None:
        """Add ``task_id`` to the user's active set when it holds fewer than ``quota`` live
        entries (None); else add nothing and return the live entries (id -> seconds since
        each was added, by the backend's clock)."""
        ...

    async def release(self, user_id: str, *task_ids: str) -> None: ...


# --- Redis ---------------------------------------------------------------------------------

# Redis's own clock (TIME), so API processes on hosts whose clocks differ agree.
# GCRA: the key holds the theoretical arrival time (µs) of the next submission; one is allowed
# while that time is at most `tolerance` ahead of now. Answers 0, or the µs to wait.
_RATE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return 0
"""

# Drops expired entries, then adds ARGV[1] (score: its expiry) below the quota ARGV[2].
# Answers {} when added, else {now, id, expiry, id, expiry, ...}.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local out = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  table.insert(out, 1, tostring(now))
  return out
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- The set expires with its last entry (the key's TTL is only ever pushed back).
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1) end
return {}
"""


class RedisBackend:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._rate = client.register_script(_RATE_LUA)
        self._acquire = client.register_script(_ACQUIRE_LUA)

    async def take(self, user_id: str, interval_s: float, burst: int) -> float:
        interval = round(interval_s * 1e6)
        wait_us = await self._rate(
            keys=[f"{PREFIX}:rate:{user_id}"], args=[interval, interval * (burst - 1)]
        )
        return int(cast(int, wait_us)) / 1e6

    async def acquire(
        self, user_id: str, task_id: str, quota: int, ttl_s: float
    ) -> dict[str, float] | None:
        out = cast(
            list[bytes],
            await self._acquire(keys=[_active_key(user_id)], args=[task_id, quota, ttl_s]),
        )
        if not out:
            return None
        now, rest = float(out[0]), out[1:]
        # The score is the entry's expiry: it was added ttl_s before that.
        return {
            rest[i].decode(): now - (float(rest[i + 1]) - ttl_s) for i in range(0, len(rest), 2)
        }

    async def release(self, user_id: str, *task_ids: str) -> None:
        if task_ids:
            await self.redis.zrem(_active_key(user_id), *task_ids)


def _active_key(user_id: str) -> str:
    return f"{PREFIX}:active:{user_id}"


# --- This process (embedded mode) ------------------------------------------------------------


class MemoryBackend:
    """The same counters in a dict: one API process is the only one there is."""

    #: Users whose entries are all stale are forgotten at most this often (s).
    PRUNE_EVERY_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._active: dict[str, dict[str, float]] = {}  # user -> task id -> expiry
        self._pruned = clock()

    async def take(self, user_id: str, interval_s: float, burst: int) -> float:
        with self._lock:
            now = self._prune()
            tat = max(self._tat.get(user_id, now), now)
            wait = tat - interval_s * (burst - 1) - now
            if wait > 0:
                return wait
            self._tat[user_id] = tat + interval_s
            return 0.0

    async def acquire(
        self, user_id: str, task_id: str, quota: int, ttl_s: float
    ) -> dict[str, float] | None:
        with self._lock:
            now = self._prune()
            active = {k: exp for k, exp in self._active.get(user_id, {}).items() if exp > now}
            if len(active) >= quota:
                self._active[user_id] = active
                return {k: now - (exp - ttl_s) for k, exp in active.items()}
            active[task_id] = now + ttl_s
            self._active[user_id] = active
            return None

    async def release(self, user_id: str, *task_ids: str) -> None:
        with self._lock:
            active = self._active.get(user_id, {})
            for task_id in task_ids:
                active.pop(task_id, None)

    def _prune(self) -> float:
        # Called with the lock held: a user's entry that has run out is the same as none.
        now = self._clock()
        if now - self._pruned >= self.PRUNE_EVERY_S:
            self._pruned = now
            self._tat = {u: tat for u, tat in self._tat.items() if tat > now}
            self._active = {
                u: live
                for u, entries in self._active.items()
                if (live := {k: exp for k, exp in entries.items() if exp > now})
            }
        return now


# --- Queue depths ----------------------------------------------------------------------------


class QueueDepths:
    """Ready messages per queue, read with ``read`` (blocking) at most every ``ttl_s``, on a
    thread; concurrent requests wait for the one reading instead of each opening their own."""

    def __init__(self, read: Callable[[], QueueCounts], ttl_s: float = DEPTH_TTL_S) -> None:
        self._read = read
        self.ttl_s = ttl_s
        self._ready: Mapping[str, int] = {}
        self._at = float("-inf")
        self._lock = anyio.Lock()

    async def ready(self) -> Mapping[str, int]:
        if time.monotonic() - self._at < self.ttl_s:
            return self._ready
        async with self._lock:
            if time.monotonic() - self._at < self.ttl_s:
                return self._ready
            try:
                counts = await anyio.to_thread.run_sync(self._read)
                self._ready = {queue: values[0] for queue, values in counts.items()}
            except Exception as exc:
                # Unknown depths refuse nothing: a broker that is down fails the publish (503
                # queue_unavailable) anyway. Not retried before the ttl either.
                log.warning("could not read the queue depths: %s", exc)
                self._ready = {}
            self._at = time.monotonic()
            return self._ready


def plan_queues(plan: Plan) -> frozenset[str]:
    """Every queue a run of ``plan`` may publish to: its stages', its handlers', and the
    default queue of the DAG runtime's own messages."""
    queues = {step.queue for step in (*plan.steps, *plan.on_failure, *plan.finally_)}
    if plan.mode == "dag":
        queues.add("default")
    return frozenset(queues)


# --- The checks ------------------------------------------------------------------------------


class Admission:
    """A task let in: holds its slot in the user's active set until ``release()`` (when the
    task is not stored or queued after all) or until the task ends."""

    def __init__(self, backend: Backend | None, user_id: str, task_id: str) -> None:
        self._backend, self.user_id, self.task_id = backend, user_id, task_id

    async def release(self) -> None:
        if self._backend is None:
            return
        # Shielded: this runs on the way out of a cancelled request too.
        with anyio.CancelScope(shield=True):
            try:
                await self._backend.release(self.user_id, self.task_id)
            except redis.exceptions.RedisError as exc:
                log.warning("could not free the slot of task %s: %s", self.task_id, exc)


class Limits:
    """The checks of one API process; see the module's docstring."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        depths: QueueDepths,
        db: Database,
        entry_ttl_s: float,
    ) -> None:
        self.rate_per_minute = settings.rate_limit_per_minute
        self.burst = settings.rate_limit_burst
        self.max_active = settings.max_active_tasks_per_user
        self.max_queue_depth = settings.max_queue_depth
        self.backend, self.depths, self.db, self.entry_ttl_s = backend, depths, db, entry_ttl_s

    @classmethod
    def build(
        cls,
        settings: Settings,
        state: State,
        broker: dramatiq.Broker,
        db: Database,
        workflows: Mapping[str, Workflow],
    ) -> Limits:
        """Redis when the state is in Redis (shared by every API process), else this
        process's memory."""
        # Imported here: api.metrics imports the task view, which needs nothing of this.
        from api.metrics import queue_counts

        client = getattr(state, "redis", None)
        backend: Backend = (
            RedisBackend(client) if isinstance(client, aioredis.Redis) else MemoryBackend()
        )
        default = settings.task_deadline_s
        longest = max([default, *(wf.deadline(default) for wf in workflows.values())])
        return cls(
            settings,
            backend,
            QueueDepths(lambda: queue_counts(broker)),
            db,
            entry_ttl_s=longest + ENTRY_MARGIN_S,
        )

    async def admit(self, plan: Plan, user_id: str, task_id: str) -> Admission:
        """Let ``task_id`` in, or raise ApiError: 503 ``queue_full`` when a queue of the plan
        is over MAX_QUEUE_DEPTH, 429 ``rate_limited`` or ``too_many_active_tasks``, each with
        a Retry-After header. Call it once the request is valid and before storing anything;
        ``release()`` the answer when the task is not stored or queued after all.

        A limit whose counters cannot be reached (Redis down) is not applied: the outage is
        logged, and the submission goes on.
        """
        workflow = plan.workflow.name
        await self._check_queues(plan)
        try:
            if self.rate_per_minute > 0:
                await self._check_rate(workflow, user_id)
            if self.max_active > 0:
                await self._acquire(workflow, user_id, task_id)
                return Admission(self.backend, user_id, task_id)
        except redis.exceptions.RedisError as exc:
            log.warning("per-user limits not checked (Redis): %s", exc)
        return Admission(None, user_id, task_id)

    async def _check_queues(self, plan: Plan) -> None:
        if self.max_queue_depth <= 0:
            return
        ready = await self.depths.ready()
        full = sorted(q for q in plan_queues(plan) if ready.get(q, 0) > self.max_queue_depth)
        if full:
            jitter = random.randint(-QUEUE_FULL_JITTER_S, QUEUE_FULL_JITTER_S)
            retry = QUEUE_FULL_RETRY_S + jitter
            refuse(
                503,
                plan.workflow.name,
                "queue_full",
                f"the queue of workflow '{plan.workflow.name}' is full (over "
                f"{self.max_queue_depth} waiting in {', '.join(full)}); retry later",
                retry,
            )

    async def _check_rate(self, workflow: str, user_id: str) -> None:
        wait = await self.backend.take(user_id, 60.0 / self.rate_per_minute, self.burst)
        if wait > 0:
            refuse(
                429,
                workflow,
                "rate_limited",
                f"user '{user_id}' may submit {self.rate_per_minute} tasks a minute (bursts of "
                f"{self.burst}); retry after the time in Retry-After",
                wait,
            )

    async def _acquire(self, workflow: str, user_id: str, task_id: str) -> None:
        active = await self.backend.acquire(user_id, task_id, self.max_active, self.entry_ttl_s)
        if active is None:
            return
        if await self._reconcile(user_id, active):
            active = await self.backend.acquire(user_id, task_id, self.max_active, self.entry_ttl_s)
            if active is None:
                return
        refuse(
            429,
            workflow,
            "too_many_active_tasks",
            f"user '{user_id}' has {len(active)} tasks queued or running, the most allowed at "
            "once; retry when one has ended",
            ACTIVE_RETRY_S,
        )

    async def _reconcile(self, user_id: str, active: Mapping[str, float]) -> bool:
        """Drop the entries whose task has ended, or was never stored; True when any was."""
        async with self.db.session() as session:
            rows = await session.execute(select(Task.id, Task.status).where(Task.id.in_(active)))
            status = {task_id: TaskStatus(value) for task_id, value in rows.tuples()}
        gone = [
            task_id
            for task_id, age in active.items()
            if (task_id in status and status[task_id].terminal)
            or (task_id not in status and age > UNSTORED_GRACE_S)
        ]
        await self.backend.release(user_id, *gone)
        return bool(gone)


def refuse(status: int, workflow: str, code: str, message: str, retry_after_s: float) -> NoReturn:
    """Count the refusal, then raise it with a Retry-After of whole seconds (at least 1)."""
    TASKS_REFUSED.labels(workflow, code).inc()
    seconds = max(1, math.ceil(retry_after_s))
    raise ApiError(status, code, message, headers={"retry-after": str(seconds)})
