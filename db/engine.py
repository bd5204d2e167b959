"""Async engine and session factory, one per process and database URL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Executable, Row, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


class Database:
    """An engine plus its session factory.

    Create one per process (the API's lifespan, a worker's boot) and ``dispose()`` it on
    shutdown: asyncpg connections belong to the event loop that opened them.
    """

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        kwargs: dict[str, object] = {}
        if url.startswith("postgresql"):
            # No pre-ping (it doubles the round trips of a submit); connections are recycled
            # instead, and one broken by a database restart fails one request, not more.
            kwargs |= {"pool_size": pool_size, "max_overflow": pool_size, "pool_recycle": 1800}
        sqlite_file = sqlite_path(url)
        if sqlite_file is not None:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            # The API and the in-process workers write from different threads: wait for the
            # lock instead of failing with "database is locked".
            kwargs["connect_args"] = {"timeout": 30}
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if sqlite_file is not None:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        # expire_on_commit=False: rows are read after commit to build responses.
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # One statement, one round trip: without a transaction around it, a lone read or a
        # conditional UPDATE costs no BEGIN and COMMIT/ROLLBACK (three round trips to one).
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._single = async_sessionmaker(self._autocommit, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    def single(self) -> AsyncSession:
        """A session for ONE statement that is atomic by itself (a read by key, a
        conditional UPDATE): it runs outside any transaction, committed as it runs."""
        return self._single()

    async def execute_one(
        self, statement: Executable, params: Mapping[str, Any]
    ) -> Sequence[Row[Any]]:
        """Run ONE statement that is atomic by itself on a Core connection, outside any
        transaction (no ORM, one round trip); the rows it returns (``RETURNING``)."""
        async with self._autocommit.connect() as conn:
            result = await conn.execute(statement, dict(params))
            return result.all() if result.returns_rows else []

    async def dispose(self) -> None:
        await self.engine.dispose()


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite+aiosqlite:///path`` URL, None for other databases."""
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:":
        return None
    return Path(url.removeprefix(prefix))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
