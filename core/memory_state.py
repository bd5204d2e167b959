"""Short-lived task state in this process's memory (embedded mode): the TaskState interface
without Redis. Safe to share between the API's event loop and the worker's."""

from __future__ import annotations

import threading
import time
from typing import Any

from core.state import BLOB_TTL_S


class MemoryState:
    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple[float, dict[str, Any]]] = {}
        self._blobs: dict[str, tuple[float, bytes]] = {}
        self._cancelled: dict[str, float] = {}  # task id -> expiry

    def _task(self, task_id: str) -> dict[str, Any]:
        # Called with the lock held; drops expired entries as it goes.
        now = time.monotonic()
        for key in [k for k, (exp, _) in self._tasks.items() if exp < now]:
            del self._tasks[key]
        _, entry = self._tasks.get(task_id, (0.0, {"stages": {}}))
        self._tasks[task_id] = (now + self.ttl_s, entry)
        return entry

    async def stage_event(
        self, task_id: str, stage_id: str, status: str, data: dict[str, Any] | None = None
    ) -> None:
        entry = {"status": status, "at": time.time(), **({"data": data} if data else {})}
        with self._lock:
            self._task(task_id)["stages"][stage_id] = entry

    async def stage_started(self, task_id: str, stage_id: str, after: str | None) -> bool | None:
        now = time.time()
        with self._lock:
            stages = self._task(task_id)["stages"]
            stages[stage_id] = {"status": "running", "at": now}
            if after is not None:
                stages[after] = {"status": "done", "at": now}
            return self._cancelled.get(task_id, 0.0) >= time.monotonic()

    async def set_progress(self, task_id: str, stage_id: str, fraction: float) -> None:
        with self._lock:
            self._task(task_id)["progress"] = {"stage": stage_id, "fraction": fraction}

    async def set_result(self, task_id: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._task(task_id)["result"] = result

    async def set_cancelled(self, task_id: str) -> None:
        with self._lock:
            now = time.monotonic()
            for key in [k for k, exp in self._cancelled.items() if exp < now]:
                del self._cancelled[key]
            self._cancelled[task_id] = now + self.ttl_s

    async def is_cancelled(self, task_id: str) -> bool:
        with self._lock:
            return self._cancelled.get(task_id, 0.0) >= time.monotonic()

    async def get(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            exp, entry = self._tasks.get(task_id, (0.0, None))
            if entry is None or exp < time.monotonic():
                return {"stages": {}}
            return {**entry, "stages": dict(entry["stages"])}

    async def failures(self, message_ids: list[str]) -> dict[str, str]:
        # In-process dead letters carry their final traceback in their own options.
        return {}

    async def put_blob(self, key: str, data: bytes) -> None:
        with self._lock:
            self._blobs[key] = (time.monotonic() + BLOB_TTL_S, data)

    async def get_blob(self, key: str) -> bytes | None:
        with self._lock:
            exp, data = self._blobs.get(key, (0.0, b""))
            return data if exp >= time.monotonic() else None

    async def delete_blob(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
