"""Short-lived task state in Redis: per-stage progress, the aggregated result, and audio
handed from a generation worker to the store stage. Everything here expires; the durable
record is the database."""

from __future__ import annotations

import time
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis

PREFIX = "aimarket"
#: Audio waiting between the generate and store stages; long enough for a deep queue.
BLOB_TTL_S = 6 * 3600


#: The final traceback of a dead-lettered message (actors/failures.py), kept as long as
#: Dramatiq's dead-letter queues keep messages.
FAILURE_KEY = PREFIX + ":failure:{}"
FAILURE_TTL_S = 7 * 86400
MAX_TRACEBACK = 8000


def _task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def _cancel_key(task_id: str) -> str:
    return f"{PREFIX}:cancel:{task_id}"


def blob_key(task_id: str, stage_id: str, index: int) -> str:
    return f"{PREFIX}:blob:{task_id}:{stage_id}:{index}"


class TaskState:
    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, ttl_s: int) -> TaskState:
        return cls(aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5), ttl_s)

    async def stage_event(
        self, task_id: str, stage_id: str, status: str, data: dict[str, Any] | None = None
    ) -> None:
        """Record that a stage started, finished or failed (shown in GET /v1/tasks/{id})."""
        entry = {"status": status, "at": time.time(), **({"data": data} if data else {})}
        key = _task_key(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={f"stage:{stage_id}": msgspec.json.encode(entry)})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def set_progress(self, task_id: str, stage_id: str, fraction: float) -> None:
        """Decoding progress of the running stage, 0..1 (callers bound the rate)."""
        key = _task_key(task_id)
        value = msgspec.json.encode({"stage": stage_id, "fraction": round(fraction, 4)})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"progress": value})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def set_result(self, task_id: str, result: dict[str, Any]) -> None:
        key = _task_key(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"result": msgspec.json.encode(result)})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def set_cancelled(self, task_id: str) -> None:
        """Mark the task cancelled, for the generation that may be running it right now."""
        await self.redis.set(_cancel_key(task_id), b"1", ex=self.ttl_s)

    async def is_cancelled(self, task_id: str) -> bool:
        return bool(await self.redis.exists(_cancel_key(task_id)))

    async def get(self, task_id: str) -> dict[str, Any]:
        """``{"stages": {id: entry}, "result": {...}}`` or empty when nothing is kept."""
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(_task_key(task_id)))
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
        values = cast(
            list[bytes | None], await self.redis.mget([FAILURE_KEY.format(m) for m in message_ids])
        )
        return {m: v.decode() for m, v in zip(message_ids, values, strict=True) if v is not None}

    async def put_blob(self, key: str, data: bytes) -> None:
        await self.redis.set(key, data, ex=BLOB_TTL_S)

    async def get_blob(self, key: str) -> bytes | None:
        return cast(bytes | None, await self.redis.get(key))

    async def delete_blob(self, key: str) -> None:
        await self.redis.delete(key)

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()
