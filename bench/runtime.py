"""Runtime benchmark: what aimarket's stage runtime costs over bare Dramatiq, in one run.

What it compares
    (a) Hand-written: a ``dramatiq.pipeline`` of five no-op actors on RabbitMQ
        (bench/runtime_stages/handwritten.py), published from this process with a confirmed
        publish, run by ``dramatiq bench.runtime_stages.handwritten -p 1 -t 8``; the last
        actor RPUSHes the run's id onto a Redis list this process BLPOPs.
    (b) aimarket: the workflow ``bench-noop`` (four ``bench.noop`` stages and
        ``task.aggregate``, bench/runtime_stages/), submitted by ``POST /v1/tasks`` to
        ``aimarket serve``, run by ``aimarket worker -p 1 -t 8 -Q default``. The stage and
        the workflow are loaded the supported way (ACTOR_MODULES, WORKFLOWS_DIRS). The end of
        a task is pushed, not polled: a trigger in the bench's own database NOTIFYs when a
        task row turns terminal, which this process LISTENs to (the moment a client's
        ``GET /v1/tasks/{id}`` would show it). A few tasks are then read back through the API
        to check that they succeeded.

    For each side: sequential latency (one run at a time, submit -> done; p50, p90, p99 over
    ``--sequential`` runs after ``--warmup``) and concurrent throughput (``--concurrent`` runs
    with ``--in-flight`` at a time; runs per second over the whole phase, and the latency
    under load). Then the ratios (throughput aimarket / hand-written, goal >= 0.5; p50
    aimarket / hand-written, goal <= 3). Only one side's processes run at a time.

How to run
    ``uv run python bench/runtime.py`` (full: 200 sequential, 2000 concurrent, 200 in
    flight), ``--quick`` (a few seconds; what tests/test_runtime_bench.py runs), ``--out
    FILE`` (the report as JSON), ``--json`` (the report on stdout). ``--count`` loads
    bench/runtime_stages/counting.py into the API and the worker and reports the SQL
    statements, database connections and Redis commands per task (slower: do not compare its
    timings). ``--py-spy DIR`` records the aimarket worker's child and the API with py-spy
    during the concurrent phase (``--concurrent`` must last longer than ``--py-spy-seconds``)
    and prints where the time goes.

    Needs Postgres (127.0.0.1:5432, user postgres, trust), Redis (6379) and RabbitMQ (5672,
    guest/guest, ``rabbitmqctl`` usable). It makes its own backends and removes them at the
    end: a database ``aimarket_bench_rt_<hex>`` migrated by Alembic, two RabbitMQ vhosts
    ``aimarket-bench-rt-<hex>-{hw,am}``, Redis database 13 (flushed; tests use 11, bench/submit.py
    12), and a temporary DATA_DIR for local media (the no-op workflow stores none).

Its parts are the modules beside it: ``runtime_stack.py`` (the backends and the processes),
``runtime_measure.py`` (the drivers and a phase's figures), ``runtime_profile.py`` (``--count``
and ``--py-spy``) and ``runtime_report.py`` (the machine, the ratios and the table), with
``stack.py`` and ``stats.py``, which bench/submit.py shares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/: make the project importable without installing it,
# and with it this script's sibling modules, as bench.runtime_*.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.runtime_measure import (  # noqa: E402
    OWN_PIDS,
    Counts,
    Phase,
    Side,
    Waiters,
    concurrent,
    one,
    sequential,
)
from bench.runtime_profile import (  # noqa: E402
    Profiling,
    finish_profilers,
    per_task,
    py_spy,
    snapshot_counts,
    start_profilers,
)
from bench.runtime_report import GOALS, machine, ratios, render  # noqa: E402
from bench.runtime_stack import (  # noqa: E402
    CHANNEL,
    STAGES,
    WORKFLOW,
    Backends,
    amqp_url,
    clean_env,
    log,
    redis_url,
    require_reachable,
    service_env,
    setup_backends,
    start,
    wait_file,
    wait_http,
)
from bench.stack import BIN, PG, TOKEN, free_port  # noqa: E402

# --- (a) hand-written ----------------------------------------------------------------------


def run_handwritten(backends: Backends, counts: Counts, folder: Path) -> Side:
    done_key = f"aimarket:bench:runtime:done:{uuid.uuid4().hex[:6]}"
    env = clean_env()
    env.update(
        BENCH_AMQP_URL=amqp_url(backends.vhost_hw),
        BENCH_REDIS_URL=redis_url(),
        BENCH_DONE_KEY=done_key,
    )
    os.environ.update({k: env[k] for k in ("BENCH_AMQP_URL", "BENCH_REDIS_URL", "BENCH_DONE_KEY")})
    from bench.runtime_stages import handwritten

    with contextlib.ExitStack() as stack:
        args = [str(BIN / "dramatiq"), "bench.runtime_stages.handwritten", "-p", "1", "-t", "8"]
        worker = start(stack, "handwritten-worker", args, env, folder)
        log(f"hand-written: {' '.join(args[1:])} (pid {worker.proc.pid})")
        OWN_PIDS[:] = [worker.proc.pid]

        async def main() -> tuple[Phase, Phase]:
            import redis.asyncio as aioredis

            waiters = Waiters()
            client = aioredis.Redis.from_url(redis_url())

            async def listen() -> None:
                while True:
                    got = await client.blpop([done_key], timeout=1)
                    if got is not None:
                        key = got[1]
                        waiters.done(key.decode() if isinstance(key, bytes) else key, "succeeded")

            listener = asyncio.create_task(listen())
            prefix = uuid.uuid4().hex[:6]

            async def submit(i: int) -> str:
                token = f"{prefix}-{i}-{time.perf_counter_ns()}"
                await asyncio.to_thread(lambda: handwritten.pipeline(token).run())  # type: ignore[no-untyped-call]
                return token

            try:
                # The first run also waits for the worker to start consuming.
                await one(submit, waiters, -1, 120)
                await sequential(submit, waiters, counts.warmup, counts.timeout)
                seq = await sequential(submit, waiters, counts.sequential, counts.timeout)
                log(f"hand-written sequential: {seq}")
                conc = await concurrent(
                    submit, waiters, counts.concurrent, counts.in_flight, counts.timeout
                )
                log(f"hand-written concurrent: {conc}")
                worker.check()
                return seq, conc
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                await client.aclose()

        seq, conc = asyncio.run(main())
    handwritten.broker.close()
    return Side("hand-written", seq, conc, {"actors": STAGES, "worker": "dramatiq -p 1 -t 8"})


# --- (b) aimarket --------------------------------------------------------------------------


def run_aimarket(
    backends: Backends,
    counts: Counts,
    folder: Path,
    count_dir: Path | None,
    profiling: Profiling | None,
) -> Side:
    env = service_env(backends, count_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    notes: dict[str, Any] = {"stages": STAGES, "worker": "aimarket worker -p 1 -t 8 -Q default"}
    with contextlib.ExitStack() as stack:
        ready = folder / "worker-ready"
        worker = start(
            stack,
            "aimarket-worker",
            [
                str(BIN / "aimarket"),
                "worker",
                "-p",
                "1",
                "-t",
                "8",
                "-Q",
                "default",
                "--ready-file",
                str(ready),
            ],
            env,
            folder,
        )
        api = start(
            stack,
            "aimarket-api",
            [str(BIN / "aimarket"), "serve", "--port", str(port)],
            env,
            folder,
        )
        spawned = time.perf_counter()
        wait_http(f"{base}/health/live", api)
        wait_file(ready, worker)
        OWN_PIDS[:] = [worker.proc.pid, api.proc.pid]
        log(
            f"aimarket: API pid {api.proc.pid} on {base}, worker pid {worker.proc.pid} "
            f"(ready in {time.perf_counter() - spawned:.1f} s)"
        )

        async def main() -> tuple[Phase, Phase, dict[str, Any]]:
            import asyncpg  # type: ignore[import-untyped]

            waiters = Waiters()
            listener = await asyncpg.connect(
                host=PG[0], port=PG[1], user="postgres", database=backends.database
            )

            def notified(conn: Any, pid: int, channel: str, payload: str) -> None:
                task_id, _, status = payload.partition(":")
                waiters.done(task_id, status)

            await listener.add_listener(CHANNEL, notified)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            # Idle connections are dropped before uvicorn's 5 s keep-alive ends them: at equal
            # timeouts a request can go out on a connection the server is closing (ReadError).
            limits = httpx.Limits(max_connections=counts.in_flight + 8, keepalive_expiry=2.0)
            extra: dict[str, Any] = {}
            async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as http:

                async def submit(i: int) -> str:
                    body = {"workflow": WORKFLOW, "user_id": "bench-runtime", "input": {}}
                    answer = await http.post("/v1/tasks", json=body, timeout=60)
                    if answer.status_code != 202:
                        raise RuntimeError(f"POST /v1/tasks: {answer.status_code} {answer.text}")
                    return str(answer.json()["task_id"])

                try:
                    first = await one(submit, waiters, -1, 120)
                    if not first[1]:
                        raise RuntimeError(
                            "the first bench-noop task did not succeed:\n" + worker.output()
                        )
                    await sequential(submit, waiters, counts.warmup, counts.timeout)
                    if count_dir is not None:
                        await asyncio.sleep(0.6)  # the warm-up's counts written first
                    before = snapshot_counts(count_dir)
                    seq = await sequential(submit, waiters, counts.sequential, counts.timeout)
                    log(f"aimarket sequential: {seq}")
                    if count_dir is not None:
                        await asyncio.sleep(0.6)  # the processes write their counts every 0.2 s
                        extra["per_task"] = per_task(before, snapshot_counts(count_dir), seq.runs)
                    profilers = start_profilers(profiling, api, worker)
                    conc = await concurrent(
                        submit, waiters, counts.concurrent, counts.in_flight, counts.timeout
                    )
                    log(f"aimarket concurrent: {conc}")
                    if profilers:
                        extra["profile"] = finish_profilers(profilers, conc.wall_s)
                    # Read a few back as a client would: the end signal is not the only proof.
                    recent = await http.get(
                        "/v1/tasks", params={"user_id": "bench-runtime", "limit": 20}
                    )
                    if recent.status_code == 200:
                        statuses = Counter(t["status"] for t in recent.json().get("tasks", []))
                        extra["last_20_statuses"] = dict(statuses)
                finally:
                    await listener.close()
            worker.check()
            api.check()
            return seq, conc, extra

        seq, conc, extra = asyncio.run(main())
    notes.update(extra)
    return Side("aimarket", seq, conc, notes)


# --- Main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    parser.add_argument("--sequential", type=int, help="sequential runs per side (200)")
    parser.add_argument("--concurrent", type=int, help="runs in the concurrent phase (2000)")
    parser.add_argument("--in-flight", type=int, help="runs in flight at once (200)")
    parser.add_argument("--warmup", type=int, help="unmeasured runs first (30)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one run may take")
    parser.add_argument("--only", choices=("handwritten", "aimarket"), help="one side only")
    parser.add_argument(
        "--count",
        action="store_true",
        help="count SQL statements and Redis commands per task (slower)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="py-spy the aimarket worker and API in the concurrent phase",
    )
    parser.add_argument("--py-spy-seconds", type=int, default=15)
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    quick = {"sequential": 15, "concurrent": 60, "in_flight": 20, "warmup": 3}
    full = {"sequential": 200, "concurrent": 2000, "in_flight": 200, "warmup": 30}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that the ExitStack removes the backends


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_reachable()
    counts = Counts(args.sequential, args.concurrent, args.in_flight, args.warmup, args.timeout)
    info = machine()
    with contextlib.ExitStack() as stack:
        backends = setup_backends(stack)
        folder = backends.data_dir
        count_dir = None
        if args.count:
            count_dir = folder / "counts"
            count_dir.mkdir()
        profiling = None
        if args.py_spy is not None:
            py_spy()
            args.py_spy.mkdir(parents=True, exist_ok=True)
            profiling = Profiling(args.py_spy, args.py_spy_seconds)
        empty = Phase(0, 0, 0.0, math.nan, math.nan, math.nan, math.nan, math.nan, 0)
        hw = Side("hand-written", empty, empty)
        am = Side("aimarket", empty, empty)
        try:
            if args.only != "aimarket":
                hw = run_handwritten(backends, counts, folder)
            if args.only != "handwritten":
                am = run_aimarket(backends, counts, folder, count_dir, profiling)
        except Exception:
            for name in ("handwritten-worker", "aimarket-worker", "aimarket-api"):
                path = folder / f"{name}.log"
                if path.exists():
                    log(f"--- {name} log (end) ---\n{path.read_text(errors='replace')[-3000:]}")
            raise
    return {
        "mode": "quick" if args.quick else "full",
        "counts": asdict(counts),
        "counting_on": args.count,
        "machine": info,
        "sides": [asdict(hw), asdict(am)],
        "ratios": ratios(hw, am),
        "goals": GOALS,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    report = run(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        log(f"wrote {args.out}")
    print(json.dumps(report, indent=2, default=str) if args.json else render(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
