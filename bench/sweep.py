"""Sweep benchmark: what the sweep's three queries cost on a large task table, with the
indexes of migrations 0006 and 0007 and without them (dropped in the same run: the baseline).

Every API process runs one sweep pass a minute (one at a time). A pass reads the active tasks
old enough to be late or stuck, oldest first, the tasks that ended in the last day with no
try of their final callback, and the final callbacks whose next try is overdue (one in a
hundred deliveries here was retried once, one in ten thousand waits for its next try). Rows
are never deleted, so the table only grows: the question is whether a pass stays cheap when
it holds millions of ended tasks and a few active ones.

It builds a throw-away Postgres database (Alembic migrations), fills it with ``--ended`` ended
tasks (finished over the last ``--days`` days, each with a recorded callback try, as a healthy
service leaves them) and ``--active`` queued or running tasks, then times each query
``--rounds`` times with the indexes and again after dropping them (``ANALYZE`` both times).

    uv run python bench/sweep.py [--ended 1000000] [--active 2000] [--rounds 20]

Needs Postgres on 127.0.0.1:5432 (user postgres, trust auth). Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH = 10_000  # rows per COPY


async def admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fill(name: str, ended: int, active: int, days: float) -> None:
    """COPY the rows in: ended tasks (and one callback try each), then active ones."""
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database=name)
    now = datetime.now(UTC)
    columns = [
        "id", "workflow", "workflow_version", "user_id", "status", "input", "outputs",
        "created_at", "started_at", "finished_at", "audio_s", "callback_url",
    ]  # fmt: skip
    try:
        done = 0
        while done < ended:
            rows, tries = [], []
            for i in range(done, min(ended, done + BATCH)):
                task_id = str(uuid.uuid4())
                finished = now - timedelta(seconds=days * 86400 * (i / ended))
                status = "cancelled" if i % 50 == 0 else "failed" if i % 10 == 0 else "succeeded"
                created = finished - timedelta(seconds=30)
                rows.append(
                    (task_id, "text2music", 1, f"u{i % 5000}", status, "{}", "[]",
                     created, created, finished, 8.0, "https://m.example/hook")
                )  # fmt: skip
                hook, webhook, later = "https://m.example/hook", f"{task_id}:{status}", None
                if i % 100 == 0:  # a receiver that was down once: a retried delivery
                    later = finished + timedelta(seconds=5)
                    tries.append((task_id, webhook, 1, hook, 503, 12, finished, "retrying", later))
                    tries.append((task_id, webhook, 2, hook, 200, 12, later, "delivered", None))
                elif i % 10_000 == 1:  # a delivery waiting for its next try, hours away
                    later = now + timedelta(hours=2)
                    tries.append((task_id, webhook, 4, hook, 503, 12, finished, "retrying", later))
                else:
                    tries.append((task_id, webhook, 1, hook, 200, 12, finished, "delivered", None))
            await conn.copy_records_to_table("tasks", records=rows, columns=columns)
            await conn.copy_records_to_table(
                "callback_attempts",
                records=tries,
                columns=["task_id", "webhook_id", "attempt", "url", "status_code", "latency_ms",
                         "created_at", "outcome", "next_attempt_at"],
            )  # fmt: skip
            done += len(rows)
        live = [
            (str(uuid.uuid4()), "text2music", 1, f"u{i}", ("queued", "running")[i % 2], "{}",
             "[]", now - timedelta(seconds=i % 600), None, None, 0.0, None)
            for i in range(active)
        ]  # fmt: skip
        await conn.copy_records_to_table("tasks", records=live, columns=columns)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def time_queries(url: str, rounds: int, stuck_after_s: float) -> dict[str, float]:
    """Median milliseconds of each sweep query, as the sweep calls them."""
    from db.callbacks import pending_deliveries
    from db.engine import Database
    from db.tasks import stale_active_tasks, untold_ended_tasks

    db = Database(url)
    now = datetime.now(UTC)
    out: dict[str, list[float]] = {
        "stale_active_tasks": [],
        "untold_ended_tasks": [],
        "pending_deliveries": [],
    }
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            await stale_active_tasks(db, now - timedelta(seconds=stuck_after_s), 500)
            out["stale_active_tasks"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await untold_ended_tasks(db, now - timedelta(days=1), now - timedelta(minutes=5), 500)
            out["untold_ended_tasks"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await pending_deliveries(db, now - timedelta(days=2), now - timedelta(minutes=5), 500)
            out["pending_deliveries"].append((time.perf_counter() - started) * 1000)
    finally:
        await db.dispose()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--ended", type=int, default=1_000_000, help="ended tasks in the table")
    parser.add_argument("--active", type=int, default=2000, help="queued or running tasks")
    parser.add_argument("--days", type=float, default=30.0, help="span of the end times")
    parser.add_argument("--rounds", type=int, default=20, help="timings per query and setup")
    args = parser.parse_args()

    from db.migrate import upgrade

    name = f"aimarket_bench_sweep_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(url, log=False)
        started = time.perf_counter()
        asyncio.run(fill(name, args.ended, args.active, args.days))
        print(
            f"{args.ended} ended and {args.active} active tasks loaded in "
            f"{time.perf_counter() - started:.0f} s"
        )
        # Stuck after 900 s: the active tasks (0 to 10 minutes old) are too young to be
        # candidates, as in a healthy service; the query must still find that out cheaply.
        with_indexes = asyncio.run(time_queries(url, args.rounds, 900.0))

        async def drop() -> None:
            import asyncpg

            conn = await asyncpg.connect(
                host="127.0.0.1", port=5432, user="postgres", database=name
            )
            try:
                await conn.execute("DROP INDEX ix_tasks_active_created")
                await conn.execute("DROP INDEX ix_tasks_finished")
                await conn.execute("DROP INDEX ix_callback_attempts_due")
                await conn.execute("ANALYZE")
            finally:
                await conn.close()

        asyncio.run(drop())
        without = asyncio.run(time_queries(url, args.rounds, 900.0))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"{'query':<22} {'with indexes ms':>16} {'without ms':>11} {'ratio':>7}")
    for query in with_indexes:
        a, b = with_indexes[query], without[query]
        print(f"{query:<22} {a:>16.2f} {b:>11.2f} {b / a:>7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
