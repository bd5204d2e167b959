"""The submit benchmark's measurements: one phase's rate and latencies (``Phase``), and the
CPU each process group spent, read from ``/proc``. Part of ``bench/submit.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import CLK_TCK, machine_ticks, percentile

# --- Results ----------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase: its rate over accepted operations and their latencies."""

    name: str
    concurrency: int
    requests: int
    accepted: int
    wall_s: float
    rate_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    #: CPU seconds spent per accepted operation by each process group, in ms (see cpu_groups).
    cpu_ms_per_op: dict[str, float] = field(default_factory=dict)
    #: Share of the machine's CPU time (all cores) that was busy during the phase.
    machine_busy: float = 0.0
    #: The busiest processes inside "other", CPU ms per accepted operation.
    other_top_ms_per_op: dict[str, float] = field(default_factory=dict)
    #: Share of one core used by the main thread (the event loop) of the API and of this
    #: process during the phase.
    main_thread_busy: dict[str, float] = field(default_factory=dict)
    #: Postgres backends started and ended between the start and the end of the phase.
    postgres_started: int = 0
    postgres_ended: int = 0
    #: The first few errors, with when they happened in the phase.
    error_samples: list[str] = field(default_factory=list)
    #: Median of each part of an operation, in ms (bare loops: insert + commit, publish).
    parts_p50_ms: dict[str, float] = field(default_factory=dict)


def summarize(
    name: str,
    concurrency: int,
    requests: int,
    wall_s: float,
    latencies: list[float],
    errors: Counter[str],
) -> Phase:
    lat = sorted(x * 1000 for x in latencies)
    return Phase(
        name=name,
        concurrency=concurrency,
        requests=requests,
        accepted=len(lat),
        wall_s=wall_s,
        rate_per_s=len(lat) / wall_s if wall_s > 0 else 0.0,
        p50_ms=percentile(lat, 50),
        p90_ms=percentile(lat, 90),
        p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else math.nan,
        errors=dict(errors),
    )


# --- CPU accounting from /proc ------------------------------------------------------------
#
# Everything (client, API, Postgres, RabbitMQ) shares the same cores, so the rate alone does
# not say where the time goes. CPU seconds per accepted task, per process group, does.


def _process_cpu(pid: int) -> tuple[str, dict[int, float]] | None:
    """A process's name and the CPU seconds of each of its threads.

    From each thread's ``schedstat`` (nanoseconds of run time): ``/proc/<pid>/stat`` counts
    in 10 ms ticks, too coarse for a Postgres backend that runs a few ms per phase.
    """
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        threads: dict[int, float] = {}
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                ns = Path(task.path, "schedstat").read_text().split()[0]
                threads[int(task.name)] = int(ns) / 1e9
    except OSError:  # the process ended meanwhile
        return None
    return comm, threads


@dataclass
class MachineCpu:
    """CPU seconds of all cores since boot, from the first line of /proc/stat."""

    busy_s: float  # everything but idle and iowait
    total_s: float
    irq_s: float  # interrupts and softirqs: on loopback, much of the TCP work lands here
    steal_s: float  # time the hypervisor gave this VM's vCPUs to someone else


def _machine_cpu() -> MachineCpu:
    f = [x / CLK_TCK for x in machine_ticks()]
    total = sum(f[:8])  # guest and guest_nice are inside user and nice already
    return MachineCpu(total - f[3] - f[4], total, f[5] + f[6], f[7])


def background_busy(seconds: float = 2.0) -> float:
    """Share of the machine's CPU busy while this benchmark does nothing: other work on a
    shared machine competes for the same cores and lowers every figure."""
    before = _machine_cpu()
    time.sleep(seconds)
    after = _machine_cpu()
    total = after.total_s - before.total_s
    return (after.busy_s - before.busy_s) / total if total > 0 else 0.0


@dataclass
class CpuSnapshot:
    #: (pid, tid) -> (process name, CPU seconds of that thread so far)
    threads: dict[tuple[int, int], tuple[str, float]]
    machine: MachineCpu


def cpu_snapshot() -> CpuSnapshot:
    threads: dict[tuple[int, int], tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (found := _process_cpu(int(entry.name))) is not None:
            comm, per_thread = found
            for tid, seconds in per_thread.items():
                threads[int(entry.name), tid] = (comm, seconds)
    return CpuSnapshot(threads, _machine_cpu())


def postgres_churn(before: CpuSnapshot, after: CpuSnapshot) -> tuple[int, int]:
    """Postgres processes (one per connection) that appeared and disappeared between two
    snapshots: a pool that keeps its connections shows (0, 0)."""
    pids = [
        {pid for (pid, _), (comm, _) in snap.threads.items() if comm == "postgres"}
        for snap in (before, after)
    ]
    return len(pids[1] - pids[0]), len(pids[0] - pids[1])


def main_thread_cpu(before: CpuSnapshot, after: CpuSnapshot, pid: int) -> float:
    """CPU seconds of a process's main thread (the event loop, in the API and here): one
    thread cannot use more than one core, so near 1 s per second it is the limit."""
    key = (pid, pid)
    if key not in after.threads:
        return 0.0
    return after.threads[key][1] - before.threads.get(key, ("", 0.0))[1]


def cpu_groups(
    before: CpuSnapshot, after: CpuSnapshot, api_pid: int
) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds spent between two snapshots: the API process, this process (the HTTP
    client, or the bare loop), Postgres backends, RabbitMQ, interrupts, stolen time and the
    rest of the machine (other processes, kernel threads, threads that ended meanwhile).
    Also the other processes by name, to tell a noisy neighbour from the benchmark."""
    groups = dict.fromkeys(("api", "bench", "postgres", "rabbitmq"), 0.0)
    others: dict[str, float] = {}
    for (pid, tid), (comm, seconds) in after.threads.items():
        used = seconds - before.threads.get((pid, tid), (comm, 0.0))[1]
        if pid == api_pid:
            groups["api"] += used
        elif pid == os.getpid():
            groups["bench"] += used
        elif comm == "postgres":
            groups["postgres"] += used
        elif comm.startswith(("beam", "erl_child")):
            groups["rabbitmq"] += used
        elif used > 0:
            others[comm] = others.get(comm, 0.0) + used
    groups["irq"] = after.machine.irq_s - before.machine.irq_s
    groups["steal"] = after.machine.steal_s - before.machine.steal_s
    busy = after.machine.busy_s - before.machine.busy_s
    groups["other"] = max(0.0, busy - sum(groups.values()))
    return groups, others
