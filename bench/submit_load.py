"""The submit benchmark's load: closed-loop drivers of ``POST /v1/tasks`` through the API, and
of the same per-task work in this process without HTTP (the bare loops). Part of
``bench/submit.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.stack import TOKEN
from bench.stats import percentile
from bench.submit_measure import (
    Phase,
    cpu_groups,
    cpu_snapshot,
    main_thread_cpu,
    postgres_churn,
    summarize,
)
from bench.submit_stack import Api, log

WORKFLOW = "text2music"
INPUT: dict[str, Any] = {"prompt": "lofi hip hop with warm piano", "duration": 5}


# --- Load generation ----------------------------------------------------------------------

#: One operation: (which concurrent loop runs it, its index); it raises when not accepted.
Op = Callable[[int, int], Awaitable[None]]


class Rejected(Exception):
    """An answer other than the expected one (e.g. an HTTP status other than 202)."""

    def __init__(self, label: str, detail: str) -> None:
        super().__init__(f"{label}: {detail}")
        self.label = label


async def drive(
    name: str, n: int, concurrency: int, op: Op, api_pid: int, measure: bool = True
) -> Phase:
    """Run ``op(0..n-1)`` from ``concurrency`` coroutines that pull the next index as they
    finish (a closed loop: at most ``concurrency`` operations in flight)."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    samples: list[str] = []  # the first few errors in full, to tell what went wrong
    counter = itertools.count()  # shared by the coroutines; one event loop, so no lock

    async def loop(worker: int) -> None:
        while (i := next(counter)) < n:
            t0 = time.perf_counter()
            try:
                await op(worker, i)
            except Exception as exc:
                errors[exc.label if isinstance(exc, Rejected) else type(exc).__name__] += 1
                if len(samples) < 5:
                    took = time.perf_counter() - t0
                    samples.append(f"op {i} at {t0 - start:.2f}s, after {took:.3f}s: {exc!r}")
            else:
                latencies.append(time.perf_counter() - t0)

    before = cpu_snapshot() if measure else None
    start = time.perf_counter()
    await asyncio.gather(*(loop(worker) for worker in range(concurrency)))
    wall = time.perf_counter() - start
    phase = summarize(name, concurrency, n, wall, latencies, errors)
    phase.error_samples = samples
    if before is not None:
        after = cpu_snapshot()
        used, others = cpu_groups(before, after, api_pid)
        per = max(1, phase.accepted)
        phase.cpu_ms_per_op = {k: v * 1000 / per for k, v in used.items()}
        busiest = sorted(others.items(), key=lambda item: -item[1])[:3]
        phase.other_top_ms_per_op = {k: v * 1000 / per for k, v in busiest}
        phase.postgres_started, phase.postgres_ended = postgres_churn(before, after)
        phase.main_thread_busy = {
            name: main_thread_cpu(before, after, pid) / wall if wall > 0 else 0.0
            for name, pid in (("api", api_pid), ("bench", os.getpid()))
        }
        total = after.machine.total_s - before.machine.total_s
        busy = after.machine.busy_s - before.machine.busy_s
        phase.machine_busy = busy / total if total > 0 else 0.0
    return phase


def api_op(clients: list[httpx.AsyncClient], prefix: str) -> Op:
    async def op(worker: int, i: int) -> None:
        body = {"workflow": WORKFLOW, "user_id": f"{prefix}-{i:06d}", "input": INPUT}
        response = await clients[worker % len(clients)].post("/v1/tasks", json=body)
        if response.status_code != 202:
            raise Rejected(f"HTTP {response.status_code}", response.text[:300])

    return op


async def measure_api(
    api: Api, args: argparse.Namespace, run_tag: str, label: str = "API"
) -> Phase:
    c = args.concurrency
    # C connections either way. By default each concurrent client has its own AsyncClient
    # (a pool of one): httpx's shared pool costs the load generator 2 ms of CPU a request at
    # C=32 and 6 ms at C=64 (0.8 ms with a pool each), CPU taken from the API on a small
    # machine. --shared-pool measures one AsyncClient with a pool of C instead.
    pools, size = (1, c) if args.shared_pool else (c, 1)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=api.url,
                    headers={"authorization": f"Bearer {TOKEN}"},
                    limits=limits,
                    timeout=60,
                )
            )
            for _ in range(pools)
        ]
        # The warm-up opens the keep-alive connections, the API's database pool and its
        # per-thread RabbitMQ channels, so the measured phase sees a steady state.
        warm = await drive(
            "warm-up", args.warmup, c, api_op(clients, f"warm-{run_tag}"), api.proc.pid, False
        )
        if warm.errors:
            log(f"warm-up errors: {warm.errors}")
        how = "one shared pool" if args.shared_pool else "a pool each"
        log(f"API: {args.requests} submits, {c} clients, {how}")
        return await drive(
            f"{label} POST /v1/tasks (C={c}{', shared pool' if args.shared_pool else ''})",
            args.requests,
            c,
            api_op(clients, f"bench-{run_tag}"),
            api.proc.pid,
        )


async def measure_bare(
    env: dict[str, str], args: argparse.Namespace, run_tag: str, api_pid: int
) -> list[Phase]:
    """The API's per-task work without HTTP: validate, INSERT + commit, confirmed publish."""
    from aimarket.app import build_services
    from core.settings import load_settings
    from db.models import Task, TaskStatus
    from db.tasks import insert_task, utcnow
    from workflows.inputs import validate_input

    # build_services is exactly what the API process builds: the same Database (pool size),
    # the broker from setup_broker (confirm_delivery=True) and the compiled plans.
    services = build_services(load_settings(env, env_file=None))
    workflow = services.workflows[WORKFLOW]
    plan = services.plans[WORKFLOW]
    c = args.concurrency

    def new_task(user_id: str) -> Task:
        # The same row the API builds, including its (microseconds) input validation.
        return Task(
            id=str(uuid.uuid4()),
            workflow=workflow.name,
            workflow_version=workflow.version,
            user_id=user_id,
            status=TaskStatus.QUEUED,
            input=validate_input(workflow, INPUT),
            callback_url=None,
            outputs=[],
            audio_s=0.0,
            created_at=utcnow(),
        )

    # Each op times its two halves too, so the report can say where a task's time goes.
    Parts = dict[str, list[float]]

    def sequential(prefix: str, parts: Parts) -> Op:
        async def op(worker: int, i: int) -> None:
            t0 = time.perf_counter()
            task = await insert_task(services.db, new_task(f"{prefix}-{i:06d}"))
            t1 = time.perf_counter()
            # Blocking publish on the loop's own thread: nothing else runs meanwhile.
            plan.pipeline(services.broker, task.id).run()  # type: ignore[no-untyped-call]
            parts["insert"].append(t1 - t0)
            parts["publish"].append(time.perf_counter() - t1)

        return op

    def threaded(prefix: str, parts: Parts) -> Op:
        async def op(worker: int, i: int) -> None:
            t0 = time.perf_counter()
            task = await insert_task(services.db, new_task(f"{prefix}-{i:06d}"))
            t1 = time.perf_counter()
            # As the API: pika blocks, so publish from a worker thread (one channel each).
            await asyncio.to_thread(plan.pipeline(services.broker, task.id).run)
            parts["insert"].append(t1 - t0)
            parts["publish"].append(time.perf_counter() - t1)

        return op

    async def phase(
        name: str,
        n: int,
        concurrency: int,
        make: Callable[[str, Parts], Op],
        prefix: str,
        measure: bool = True,
    ) -> Phase:
        parts: Parts = {"insert": [], "publish": []}
        result = await drive(name, n, concurrency, make(prefix, parts), api_pid, measure)
        result.parts_p50_ms = {k: percentile(sorted(v), 50) * 1000 for k, v in parts.items()}
        return result

    # asyncio's default pool has min(32, cores + 4) threads: 6 on two cores. Give it one per
    # coroutine, as anyio's 40-token pool does for the API, so threads are not the limit.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=c, thread_name_prefix="publish")
    )
    try:
        await phase("warm-up", args.warmup, 1, sequential, f"bwarm-{run_tag}", False)
        log(f"bare loop: {args.requests} tasks, sequential")
        phases = [
            await phase("bare loop, sequential", args.requests, 1, sequential, f"bare-{run_tag}")
        ]
        if not args.no_concurrent_baseline:
            await phase("warm-up", args.warmup, c, threaded, f"cwarm-{run_tag}", False)
            log(f"bare loop: {args.requests} tasks, {c} coroutines")
            phases.append(
                await phase(
                    f"bare loop, {c} coroutines", args.requests, c, threaded, f"cbare-{run_tag}"
                )
            )
        return phases
    finally:
        await services.close()
        services.broker.close()
