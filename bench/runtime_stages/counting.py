"""Counts what each aimarket process does per task, for ``bench/runtime.py --count``: SQL
statements, new database connections and pool checkouts (SQLAlchemy events), and Redis
commands and round trips (wrapping redis.asyncio's client). Loaded through ACTOR_MODULES
beside the no-op stage, so the API and the worker both count. Each process writes its totals
to ``$BENCH_COUNT_DIR/<role>-<pid>.json`` every 0.2 s. Never loaded by a measured run: the
hooks cost time themselves.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis.asyncio.client import Pipeline, Redis
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

COUNTS: Counter[str] = Counter()
_started_in: int | None = None
_lock = threading.Lock()


def _bump(name: str, n: int = 1) -> None:
    global _started_in
    COUNTS[name] += n
    if _started_in != os.getpid():  # the first count in this process (a worker is forked)
        with _lock:
            if _started_in != os.getpid():
                _started_in = os.getpid()
                threading.Thread(target=_dump_forever, daemon=True).start()


def _dump_forever() -> None:
    folder = Path(os.environ.get("BENCH_COUNT_DIR", "."))
    role = "worker" if "worker" in sys.argv else "api"
    path = folder / f"{role}-{os.getpid()}.json"
    while True:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(COUNTS)))
        tmp.replace(path)
        time.sleep(0.2)


def _statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
    table = ""
    lowered = statement.lower()
    for word in ("tasks", "stage_runs", "callback_attempts", "idempotency"):
        if f" {word}" in lowered:
            table = word
            break
    _bump("sql")
    _bump(f"sql:{verb}{':' + table if table else ''}")


event.listen(Engine, "before_cursor_execute", _statement)
event.listen(Pool, "connect", lambda *a: _bump("db_connect"))
event.listen(Pool, "checkout", lambda *a: _bump("db_checkout"))

_execute_command = Redis.execute_command
_pipeline_execute = Pipeline.execute


async def _counted_command(self: Redis, *args: Any, **options: Any) -> Any:
    _bump("redis_roundtrips")
    _bump("redis_commands")
    _bump(f"redis:{str(args[0]).upper()}")
    return await _execute_command(self, *args, **options)  # type: ignore[no-untyped-call]


async def _counted_pipeline(self: Pipeline, raise_on_error: bool = True) -> Any:
    _bump("redis_roundtrips")
    for command in self.command_stack:
        _bump("redis_commands")
        _bump(f"redis:{str(command[0][0]).upper()}")
    return await _pipeline_execute(self, raise_on_error)


Redis.execute_command = _counted_command  # type: ignore[method-assign]
Pipeline.execute = _counted_pipeline  # type: ignore[method-assign]
