"""Picks each backend from the settings: what is configured is used for real, the rest runs
embedded in this process (SQLite, in-memory state, local media, in-process queue).

| part     | configured by                               | otherwise                    |
|----------|---------------------------------------------|------------------------------|
| database | DATABASE_URL or POSTGRES_HOST               | SQLite in DATA_DIR           |
| queue    | RABBITMQ_HOST                               | Dramatiq in-process broker   |
| state    | REDIS_HOST                                  | process memory               |
| media    | S3_BUCKET, S3_ENDPOINT_URL or AWS_ACCESS_KEY | files in DATA_DIR/media     |
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from core.settings import Settings


class State(Protocol):
    """Short-lived task state (Redis or memory)."""

    ttl_s: int

    async def stage_event(
        self, task_id: str, stage_id: str, status: str, data: dict[str, Any] | None = None
    ) -> None: ...
    async def stage_started(
        self, task_id: str, stage_id: str, after: str | None
    ) -> bool | None: ...
    async def set_progress(self, task_id: str, stage_id: str, fraction: float) -> None: ...
    async def set_result(self, task_id: str, result: dict[str, Any]) -> None: ...
    async def set_cancelled(self, task_id: str) -> None: ...
    async def is_cancelled(self, task_id: str) -> bool: ...
    async def get(self, task_id: str) -> dict[str, Any]: ...
    async def failures(self, message_ids: list[str]) -> dict[str, str]: ...
    async def put_blob(self, key: str, data: bytes) -> None: ...
    async def get_blob(self, key: str) -> bytes | None: ...
    async def delete_blob(self, key: str) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class Media(Protocol):
    """Where output files live (S3 or a local folder); blocking calls."""

    url_ttl: int

    def ensure_bucket(self) -> None: ...
    def ping(self) -> None: ...
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...
    def size(self, key: str) -> int | None: ...
    def presign(self, key: str) -> str: ...


log = logging.getLogger(__name__)


def api_token(settings: Settings) -> str:
    """MARKETPLACE_TOKEN; with an embedded database and no token set, a random one kept in
    DATA_DIR/token (so a newcomer can start with no configuration). A deployment with a real
    database must set it."""
    return kept_secret(settings, "MARKETPLACE_TOKEN", "token", lambda: secrets.token_urlsafe(24))


def kept_secret(settings: Settings, variable: str, filename: str, make: Callable[[], str]) -> str:
    """The setting ``variable`` when set; else, with an embedded database, a value made once by
    ``make`` and kept (mode 600) in DATA_DIR/``filename``, so it survives restarts; with a real
    database the setting is required (a deployment must choose its secrets)."""
    value = getattr(settings, variable.lower())
    if value:
        return str(value)
    if settings.database_dsn is not None:
        settings.require(variable)
    path = Path(settings.data_dir).resolve() / filename
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(make())
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


def database_url(settings: Settings) -> str:
    dsn = settings.database_dsn
    if dsn is not None:
        return dsn
    path = Path(settings.data_dir).resolve() / "aimarket.db"
    return f"sqlite+aiosqlite:///{path}"


def describe(settings: Settings) -> dict[str, str]:
    """Which backend each part uses, for the start-up log (no secrets)."""
    db = settings.database_dsn
    return {
        "database": f"postgres ({settings.postgres_host or 'DATABASE_URL'})"
        if db and db.startswith("postgresql")
        else (f"sql ({db.split(':', 1)[0]})" if db else f"sqlite ({database_url(settings)[18:]})"),
        "queue": f"rabbitmq ({settings.rabbitmq_host})"
        if settings.rabbitmq_host
        else f"in-process ({settings.embedded_threads} worker threads)",
        "state": f"redis ({settings.redis_host})" if settings.redis_host else "memory",
        "media": f"s3 ({settings.s3_endpoint_url or 'aws'}, bucket {settings.bucket})"
        if settings.s3_configured
        else f"local ({Path(settings.data_dir).resolve() / 'media'})",
    }


_memory_lock = threading.Lock()
_memory_state: State | None = None


def make_state(settings: Settings) -> State:
    """Redis when configured, else the process's one in-memory store (shared by the API and
    the in-process workers, which run on different event loops)."""
    global _memory_state
    url = settings.redis_url
    if url is not None:
        from core.state import TaskState

        return TaskState.from_url(url, settings.result_ttl)
    with _memory_lock:
        if _memory_state is None:
            from core.memory_state import MemoryState

            _memory_state = MemoryState(settings.result_ttl)
        return _memory_state


def make_media(settings: Settings) -> Media:
    if settings.s3_configured:
        from core.storage import MediaStore

        return MediaStore(settings)
    from core.local_media import LocalMediaStore

    return LocalMediaStore(settings)
