"""Async engine and session factory, one per process and database URL."""

from __future__ import annotations

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

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        kwargs: dict[str, object] = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            kwargs |= {"pool_size": pool_size, "max_overflow": pool_size}
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # expire_on_commit=False: rows are read after commit to build responses.
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def dispose(self) -> None:
        await self.engine.dispose()
