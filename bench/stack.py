"""What the benchmarks' stacks share (``bench/submit_stack.py``, ``bench/runtime_stack.py``):
where the backends listen, how a benchmark reports its progress, fresh isolated backends (a
Postgres database migrated by Alembic, a RabbitMQ vhost, a flushed Redis database) and the
environment that aimarket's processes get from them.

Every clean-up is registered on the caller's ``contextlib.ExitStack`` as soon as its thing
exists, so an error or Ctrl-C halfway removes what was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
RABBIT = ("127.0.0.1", 5672)
TOKEN = "bench-token-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Voice:
    """How one benchmark speaks: ``name`` prefixes its progress lines and its errors."""

    name: str

    def log(self, message: str) -> None:
        # Progress goes to stderr so that --json leaves stdout machine-readable.
        print(f"[{self.name}] {message}", file=sys.stderr, flush=True)

    def quietly(self, what: str, action: Callable[[], object]) -> Callable[[], None]:
        """A clean-up step that reports its failure instead of hiding the original error
        (and the clean-up goes on with the rest)."""

        def run() -> None:
            try:
                action()
            except Exception as exc:
                self.log(f"clean-up: could not {what}: {type(exc).__name__}: {exc}")

        return run

    def require_reachable(self) -> None:
        for name, addr in (("Postgres", PG), ("Redis", REDIS), ("RabbitMQ", RABBIT)):
            try:
                socket.create_connection(addr, timeout=2).close()
            except OSError:
                raise SystemExit(
                    f"{self.name}: {name} is not reachable at {addr[0]}:{addr[1]}"
                ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- Backends -----------------------------------------------------------------------------


async def _pg(sql: str, database: str, fetch: bool) -> str | None:
    import asyncpg  # type: ignore[import-untyped]  # (no stubs)

    conn = await asyncpg.connect(host=PG[0], port=PG[1], user="postgres", database=database)
    try:
        if not fetch:
            await conn.execute(sql)
            return None
        value = await conn.fetchval(sql)
    finally:
        await conn.close()
    return None if value is None else str(value)


def pg_execute(sql: str, database: str = "postgres") -> None:
    """Run SQL (several statements allowed) on ``database``, by default the maintenance one."""
    asyncio.run(_pg(sql, database, fetch=False))


def pg_value(sql: str) -> str | None:
    """Run one statement on the maintenance database; returns the first value, if any."""
    return asyncio.run(_pg(sql, "postgres", fetch=True))


def rabbitmqctl(*args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=check, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


def create_database(
    voice: Voice, stack: contextlib.ExitStack, name: str, *, alembic_log: bool = True
) -> str:
    """Creates the database ``name`` with the real schema; returns its SQLAlchemy URL."""
    pg_execute(f'CREATE DATABASE "{name}"')
    stack.callback(
        voice.quietly(
            f"drop {name}", lambda: pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
    )
    url = f"postgresql+asyncpg://postgres@{PG[0]}:{PG[1]}/{name}"
    from db.migrate import upgrade

    # The real schema, through the Alembic migrations (never create_all).
    upgrade(url, log=alembic_log)
    return url


def add_vhost(voice: Voice, stack: contextlib.ExitStack, vhost: str) -> None:
    """A RabbitMQ vhost that the guest user may use, deleted at the end."""
    rabbitmqctl("add_vhost", vhost)
    stack.callback(
        voice.quietly(f"delete vhost {vhost}", lambda: rabbitmqctl("delete_vhost", vhost))
    )
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def flush_redis(voice: Voice, stack: contextlib.ExitStack, db: int) -> None:
    """Empties Redis database ``db`` now and again at the end."""
    import redis

    def flush() -> None:
        redis.Redis(host=REDIS[0], port=REDIS[1], db=db).flushdb()

    flush()
    stack.callback(voice.quietly(f"flush Redis db {db}", flush))


# --- Environment --------------------------------------------------------------------------


def clean_env(*also_keep: str) -> dict[str, str]:
    """The start of a process's environment, with ``also_keep`` kept from this one's."""
    # A clean slate: the developer's own settings (or a .env) must not leak in.
    keep = ("PATH", "HOME", "LANG", "TMPDIR", *also_keep)
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
    # The processes run the code of the tree this file is in, as the baseline does, even when
    # the installed (editable) package points at another checkout.
    env["PYTHONPATH"] = str(ROOT)
    return env


def backend_env(database_url: str, redis_db: int, vhost: str) -> dict[str, str]:
    """The settings that point aimarket's processes at the bench's backends, as in
    tests/conftest.py's ``service_env``."""
    return {
        "MARKETPLACE_TOKEN": TOKEN,
        "DATABASE_URL": database_url,
        "REDIS_HOST": REDIS[0],
        "REDIS_PORT": str(REDIS[1]),
        "REDIS_DB_NAME": str(redis_db),
        "RABBITMQ_HOST": RABBIT[0],
        "RABBITMQ_PORT": str(RABBIT[1]),
        "RABBITMQ_VHOST": vhost,
        "WEBHOOK_SECRET": "whsec_" + "b" * 43 + "=",
        "LOG_LEVEL": "WARNING",
    }
