"""The runtime benchmark's measuring: the sequential and concurrent drivers (a run is
submitted, then awaited until its end signal), the latency percentiles and throughput of a
phase, and the share of the machine's CPU the phase used, read from ``/proc``. Part of
``bench/runtime.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.runtime_stack import children, cpu_s
from bench.stats import CLK_TCK, machine_ticks, percentile


@dataclass
class Phase:
    runs: int
    in_flight: int
    wall_s: float
    per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    #: Share of the machine's CPU (all cores) busy during the phase, and the part of it used
    #: by this benchmark's own processes (this one, the worker, the API; not Postgres,
    #: RabbitMQ or Redis): the rest is neighbours on a shared machine.
    machine_busy_pct: float = math.nan
    bench_processes_pct: float = math.nan


def summarize(latencies: list[float], in_flight: int, wall_s: float, errors: int) -> Phase:
    lat = sorted(x * 1000 for x in latencies)
    return Phase(
        runs=len(lat),
        in_flight=in_flight,
        wall_s=round(wall_s, 3),
        per_s=round(len(lat) / wall_s, 1) if wall_s > 0 else math.nan,
        p50_ms=round(percentile(lat, 50), 2),
        p90_ms=round(percentile(lat, 90), 2),
        p99_ms=round(percentile(lat, 99), 2),
        max_ms=round(lat[-1], 2) if lat else math.nan,
        errors=errors,
    )


@dataclass
class Side:
    name: str
    sequential: Phase
    concurrent: Phase
    notes: dict[str, Any] = field(default_factory=dict)


# --- Driving -----------------------------------------------------------------------------

Submit = Callable[[int], Awaitable[str]]


class Waiters:
    """Futures of runs in flight, resolved by the end signal (which may come first)."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[str]] = {}
        self.early: dict[str, str] = {}

    def wait(self, key: str) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if key in self.early:
            future.set_result(self.early.pop(key))
        else:
            self.futures[key] = future
        return future

    def done(self, key: str, outcome: str) -> None:
        future = self.futures.pop(key, None)
        if future is None:
            self.early[key] = outcome
        elif not future.done():
            future.set_result(outcome)


async def one(submit: Submit, waiters: Waiters, i: int, limit_s: float) -> tuple[float, bool]:
    started = time.perf_counter()
    key = await submit(i)
    outcome = await asyncio.wait_for(waiters.wait(key), limit_s)
    return time.perf_counter() - started, outcome == "succeeded"


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    values = machine_ticks()
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


#: Processes whose CPU counts as the benchmark's own (besides this one), set per side.
OWN_PIDS: list[int] = []


def own_cpu_s() -> float:
    pids = {os.getpid()}
    for pid in OWN_PIDS:
        pids.add(pid)
        pids.update(children(pid))
    return sum(cpu_s(pid) for pid in pids)


@contextlib.contextmanager
def cpu_watch(phase: list[Phase]) -> Iterator[None]:
    """Fills in the CPU shares of the phase appended to ``phase`` inside the block."""
    busy0, total0 = machine_jiffies()
    own0 = own_cpu_s()
    yield
    busy1, total1 = machine_jiffies()
    own1 = own_cpu_s()
    if phase and total1 > total0:
        phase[0].machine_busy_pct = round(100 * (busy1 - busy0) / (total1 - total0), 1)
        phase[0].bench_processes_pct = round(100 * (own1 - own0) * CLK_TCK / (total1 - total0), 1)


async def sequential(submit: Submit, waiters: Waiters, n: int, limit_s: float) -> Phase:
    out: list[Phase] = []
    with cpu_watch(out):
        out.append(await _sequential(submit, waiters, n, limit_s))
    return out[0]


async def concurrent(
    submit: Submit, waiters: Waiters, n: int, in_flight: int, limit_s: float
) -> Phase:
    out: list[Phase] = []
    with cpu_watch(out):
        out.append(await _concurrent(submit, waiters, n, in_flight, limit_s))
    return out[0]


async def _sequential(submit: Submit, waiters: Waiters, n: int, limit_s: float) -> Phase:
    latencies, errors = [], 0
    began = time.perf_counter()
    for i in range(n):
        seconds, ok = await one(submit, waiters, i, limit_s)
        latencies.append(seconds)
        errors += not ok
    return summarize(latencies, 1, time.perf_counter() - began, errors)


async def _concurrent(
    submit: Submit, waiters: Waiters, n: int, in_flight: int, limit_s: float
) -> Phase:
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []
    errors = 0

    async def run(i: int) -> None:
        nonlocal errors
        async with gate:
            seconds, ok = await one(submit, waiters, i, limit_s)
        latencies.append(seconds)
        errors += not ok

    began = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(n)))
    return summarize(latencies, in_flight, time.perf_counter() - began, errors)


@dataclass
class Counts:
    sequential: int
    concurrent: int
    in_flight: int
    warmup: int
    timeout: float
