"""The Alembic migrations, down and up again, on both databases the service runs on, and no
drift between what they build and db/models.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import command
from db.migrate import alembic_config, upgrade
from db.models import Base
from tests.conftest import PG, _psql, need

T = TypeVar("T")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    need("Postgres", PG)
    name = f"aimarket_migrate_{uuid.uuid4().hex[:8]}"
    _psql(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    return str(request.getfixturevalue("postgres_url"))


def on(url: str, fn: Callable[[Connection], T]) -> T:
    """``fn`` run on a synchronous view of an async connection to ``url``."""

    async def go() -> T:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def drift(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn)
    return [
        d
        for d in compare_metadata(context, Base.metadata)
        # alembic_version is Alembic's own table.
        if not (d[0] == "remove_table" and d[1].name == "alembic_version")
    ]


def test_down_to_nothing_and_up_again_without_drift(url: str) -> None:
    upgrade(url, log=False)
    indexes = on(url, lambda c: {i["name"] for i in inspect(c).get_indexes("tasks")})
    assert "ix_tasks_active_created" in indexes  # the sweep's (0006)
    config = alembic_config(url)
    config.attributes["configure_logging"] = False
    command.downgrade(config, "base")
    assert "tasks" not in on(url, lambda c: inspect(c).get_table_names())
    upgrade(url, log=False)
    assert on(url, drift) == []
