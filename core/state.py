"""Short-lived task state in Redis: per-stage progress, the aggregated result, and audio
handed from a generation worker to the store stage. Everything here expires; the durable
record is the database.

Redis being unreachable for a while (a restart, a failover) is expected, and what is here only
*shows* work; so losing Redis degrades instead of failing, one policy for every caller:

* writes of stage events, progress, results and cancel marks are dropped (logged once per
  outage): a stage never fails, and is never retried, for want of its progress report;
* ``get`` answers ``{"stages": {}, "unavailable": True}``: the task view leaves the live parts
  out and says so (``live_unavailable``), the sweep does not judge a task it cannot see;
* ``is_cancelled`` answers False (the row still says cancelled: the stages after a running
  one stop there), ``stage_started`` answers None (the stage then decides from the task's
  row), ``failures`` answers nothing;
* blobs raise (``StateUnavailable``): the caller must put the audio somewhere else rather than
  lose it silently (actors/handoff.py), and ``ping`` raises (readiness says ``down: redis``).

After a connection error, calls skip Redis for ``OUTAGE_RETRY_S`` instead of each waiting on
a dead connection; the first call after that tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "aimarket"
#: Audio waiting between the generate and store stages; long enough for a deep queue.
BLOB_TTL_S = 6 * 3600


#: The final traceback of a dead-lettered message (actors/failures.py), kept as long as
#: Dramatiq's dead-letter queues keep messages.
FAILURE_KEY = PREFIX + ":failure:{}"
FAILURE_TTL_S = 7 * 86400
MAX_TRACEBACK = 8000
#: Seconds calls skip Redis after it failed to answer.
OUTAGE_RETRY_S = 2.0
#: What ``get`` answers while Redis cannot be reached.
UNAVAILABLE: dict[str, Any] = {"stages": {}, "unavailable": True}
#: Errors that mean "Redis cannot be reached now", as opposed to a wrong command.
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class StateUnavailable(Exception):
    """Redis cannot be reached, and the call has no harmless answer (blobs)."""


def _task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def _cancel_key(task_id: str) -> str:
    return f"{PREFIX}:cancel:{task_id}"


def blob_key(task_id: str, stage_id: str, index: int) -> str:
    return f"{PREFIX}:blob:{task_id}:{stage_id}:{index}"


#: Set fields of a task's hash and renew its expiry, and (with a second key) say whether that
#: key exists: one command, so one round trip and one reply to parse (a pipeline of the three
#: commands cost redis-py several times the CPU, on every stage).
_WRITE_SCRIPT = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if KEYS[2] then return redis.call('EXISTS', KEYS[2]) end
return 0
"""


class TaskState:
    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._write = client.register_script(_WRITE_SCRIPT)
        #: Until when (monotonic) calls skip Redis; 0 while it answers.
        self._down_until = 0.0
        self._down = False

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, or StateUnavailable while Redis is (or was just seen) unreachable."""
        if self._down and time.monotonic() < self._down_until:
            raise StateUnavailable("Redis was unreachable moments ago")
        try:
            result = await call()
        except OUTAGE_ERRORS as exc:
            if not self._down:
                log.warning("Redis is unreachable; live task state degrades: %s", exc)
            self._down, self._down_until = True, time.monotonic() + OUTAGE_RETRY_S
            raise StateUnavailable(str(exc)) from exc
        if self._down:
            log.warning("Redis answers again; live task state is back")
            self._down = False
        return result

    async def _best_effort(self, call: Callable[[], Awaitable[T]], default: T) -> T:
        """``call()``, or ``default`` while Redis cannot be reached (see the module doc)."""
        try:
            return await self._call(call)
        except StateUnavailable:
            return default

    async def _set_field(self, task_id: str, field: str, value: bytes) -> None:
        """One field of the task's hash; the hash lives RESULT_TTL from its last write."""
        await self._write(keys=[_task_key(task_id)], args=[self.ttl_s, field, value])

    @classmethod
    def from_url(cls, url: str, ttl_s: int) -> TaskState:
        return cls(aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5), ttl_s)

    async def stage_event(
        self, task_id: str, stage_id: str, status: str, data: dict[str, Any] | None = None
    ) -> None:
        """Record that a stage started, finished or failed (shown in GET /v1/tasks/{id})."""
        entry = {"status": status, "at": time.time(), **({"data": data} if data else {})}
        value = msgspec.json.encode(entry)
        await self._best_effort(lambda: self._set_field(task_id, f"stage:{stage_id}", value), None)

    async def stage_started(self, task_id: str, stage_id: str, after: str | None) -> bool | None:
        """One round trip at a stage's start: records it ``running`` (and the stage ``after``
        it, in a pipeline, ``done``: that stage left its own ending to this write), and says
        whether the task is marked ended (by a cancel, or by the sweep).
        None while Redis cannot be reached: the caller then asks the database."""
        now = time.time()
        fields = {f"stage:{stage_id}": msgspec.json.encode({"status": "running", "at": now})}
        if after is not None:
            fields[f"stage:{after}"] = msgspec.json.encode({"status": "done", "at": now})
        keys = [_task_key(task_id), _cancel_key(task_id)]
        args: list[Any] = [self.ttl_s]
        for name, value in fields.items():
            args += [name, value]

        async def call() -> bool:
            return bool(await self._write(keys=keys, args=args))

        try:
            return await self._call(call)
        except StateUnavailable:
            return None

    async def set_progress(self, task_id: str, stage_id: str, fraction: float) -> None:
        """Decoding progress of the running stage, 0..1 (callers bound the rate)."""
        value = msgspec.json.encode({"stage": stage_id, "fraction": round(fraction, 4)})
        await self._best_effort(lambda: self._set_field(task_id, "progress", value), None)

    async def set_result(self, task_id: str, result: dict[str, Any]) -> None:
        value = msgspec.json.encode(result)
        await self._best_effort(lambda: self._set_field(task_id, "result", value), None)

    async def set_cancelled(self, task_id: str) -> None:
        """Mark the task cancelled, for the generation that may be running it right now."""
        await self._best_effort(
            lambda: self.redis.set(_cancel_key(task_id), b"1", ex=self.ttl_s), None
        )

    async def is_cancelled(self, task_id: str) -> bool:
        return bool(await self._best_effort(lambda: self.redis.exists(_cancel_key(task_id)), 0))

    async def get(self, task_id: str) -> dict[str, Any]:
        """``{"stages": {id: entry}, "result": {...}}`` or empty when nothing is kept;
        ``UNAVAILABLE`` (a copy) while Redis cannot be reached."""
        try:
            raw = cast(
                dict[bytes, bytes],
                await self._call(lambda: self.redis.hgetall(_task_key(task_id))),
            )
        except StateUnavailable:
            return {**UNAVAILABLE, "stages": {}}
        out: dict[str, Any] = {"stages": {}}
        for field, value in raw.items():
            name = field.decode()
            if name.startswith("stage:"):
                out["stages"][name.removeprefix("stage:")] = msgspec.json.decode(value)
            elif name in ("result", "progress"):
                out[name] = msgspec.json.decode(value)
        return out

    async def failures(self, message_ids: list[str]) -> dict[str, str]:
        """The final tracebacks kept for these dead-lettered messages, by message id."""
        if not message_ids:
            return {}
        keys = [FAILURE_KEY.format(m) for m in message_ids]
        values = cast(
            list[bytes | None], await self._best_effort(lambda: self.redis.mget(keys), [])
        )
        if not values:
            return {}
        return {m: v.decode() for m, v in zip(message_ids, values, strict=True) if v is not None}

    async def put_blob(self, key: str, data: bytes) -> None:
        """Raises StateUnavailable when Redis cannot be reached (see the module doc)."""
        await self._call(lambda: self.redis.set(key, data, ex=BLOB_TTL_S))

    async def get_blob(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._call(lambda: self.redis.get(key)))

    async def delete_blob(self, key: str) -> None:
        await self._call(lambda: self.redis.delete(key))

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()
