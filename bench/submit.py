"""Submit benchmark: how fast the API accepts tasks, against a bare loop doing the same work.

What it measures
    *Acceptance* of ``POST /v1/tasks``: body validation, one INSERT committed to Postgres, one
    confirmed publish of the pipeline's first message to RabbitMQ, the 202 answer. No worker
    runs, so the messages pile up in a throw-away vhost and nothing is generated.

    1. The real API (``aimarket serve``, a subprocess) is driven by ``--concurrency`` httpx
       clients for ``--requests`` submits, after ``--warmup`` submits. Only 202s count as
       accepted; anything else is an error and is reported.
    2. Baseline, same Postgres and RabbitMQ, in this process and without HTTP: a sequential
       loop doing the API's per-task work with the app's own code (``Services.build``: the
       same ``db.engine.Database``, ``db.tasks.insert_task`` of a ``db.models.Task``, the
       broker from ``aimarket.broker.setup_broker`` and the compiled plan's
       ``pipeline(broker, task_id).run()``, a blocking pika publish with delivery
       confirmation, called on the loop's own thread).
    3. The same baseline with ``--concurrency`` coroutines, publishing through
       ``asyncio.to_thread`` as the API does through anyio's thread pool.

    It also reports the API's start-up time (spawn to the first 200 on ``/health/live``), its
    resident memory after the run, whether any ``libtorch`` is mapped into it, the CPU each
    process group (API, this process, Postgres, RabbitMQ, interrupts, the rest) spent per
    accepted task, read from ``/proc``, and how long the INSERT and the publish each took in
    the bare loops. Everything shares the machine's cores, so the CPU split is what tells
    where the time goes; a busy neighbour shows up in it as "other".

How to run
    ``uv run python bench/submit.py`` with the options ``--requests N`` (2000),
    ``--concurrency C`` (32), ``--warmup W`` (100), ``--json`` (one JSON object on stdout),
    ``--no-concurrent-baseline`` and ``--profile-api FILE`` (cProfile of the API; slow), on a
    machine with Postgres (127.0.0.1:5432, user postgres, trust auth), Redis (6379) and
    RabbitMQ (5672, guest/guest, ``rabbitmqctl`` usable by this user) running.

    The per-user limits and the queue bound are off (``RATE_LIMIT_PER_MINUTE``,
    ``MAX_ACTIVE_TASKS_PER_USER`` and ``MAX_QUEUE_DEPTH`` are 0), so the figures stay
    comparable with those measured before the limits existed.

    It builds its own backends and removes them at the end, also on an error or Ctrl-C: a
    fresh database ``aimarket_bench_<hex>`` migrated by Alembic, a RabbitMQ vhost, Redis
    database 12 (flushed) and moto's S3 server on a free loopback port.

Figures and their reading are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/: make the project importable without installing it
# (its modules are imported inside the functions that need them, after this).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
RABBIT = ("127.0.0.1", 5672)
REDIS_DB = 12
TOKEN = "bench-token-" + uuid.uuid4().hex[:8]
WORKFLOW = "text2music"
INPUT: dict[str, Any] = {"prompt": "lofi hip hop with warm piano", "duration": 5}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    # Progress goes to stderr so that --json leaves stdout machine-readable.
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- Results ----------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (no interpolation)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


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
    f = [int(x) / CLK_TCK for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    total = sum(f[:8])
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


# --- Backends -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_reachable() -> None:
    for name, addr in (("Postgres", PG), ("Redis", REDIS), ("RabbitMQ", RABBIT)):
        try:
            socket.create_connection(addr, timeout=2).close()
        except OSError:
            raise SystemExit(f"bench: {name} is not reachable at {addr[0]}:{addr[1]}") from None


def pg_execute(sql: str) -> str | None:
    """Run one statement on the maintenance database; returns the first value, if any."""
    import asyncpg  # type: ignore[import-untyped]  # (no stubs)

    async def run() -> str | None:
        conn = await asyncpg.connect(host=PG[0], port=PG[1], user="postgres", database="postgres")
        try:
            value = await conn.fetchval(sql)
        finally:
            await conn.close()
        return None if value is None else str(value)

    return asyncio.run(run())


def rabbitmqctl(*args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=check, capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


def quietly(what: str, action: Callable[[], object]) -> Callable[[], None]:
    """A clean-up step that reports its failure instead of hiding the original error."""

    def run() -> None:
        try:
            action()
        except Exception as exc:
            log(f"clean-up: could not {what}: {type(exc).__name__}: {exc}")

    return run


@dataclass
class Backends:
    database_url: str
    vhost: str
    s3_endpoint: str


def setup_backends(stack: contextlib.ExitStack) -> Backends:
    """Fresh, isolated backends; each clean-up is registered as soon as its thing exists."""
    tag = uuid.uuid4().hex[:10]

    db_name = f"aimarket_bench_{tag}"
    pg_execute(f'CREATE DATABASE "{db_name}"')
    stack.callback(
        quietly(
            f"drop {db_name}",
            lambda: pg_execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'),
        )
    )
    url = f"postgresql+asyncpg://postgres@{PG[0]}:{PG[1]}/{db_name}"
    from db.migrate import upgrade

    upgrade(url)  # the real schema, through the Alembic migrations (never create_all)
    log(f"database {db_name} migrated")

    vhost = f"aimarket-bench-{tag}"
    rabbitmqctl("add_vhost", vhost)
    stack.callback(quietly(f"delete vhost {vhost}", lambda: rabbitmqctl("delete_vhost", vhost)))
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    log(f"RabbitMQ vhost {vhost} created")

    import redis

    def flush() -> None:
        redis.Redis(host=REDIS[0], port=REDIS[1], db=REDIS_DB).flushdb()

    flush()
    stack.callback(quietly(f"flush Redis db {REDIS_DB}", flush))

    from moto.server import ThreadedMotoServer

    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    stack.callback(quietly("stop the S3 server", s3.stop))
    return Backends(url, vhost, f"http://127.0.0.1:{port}")


def service_env(backends: Backends) -> dict[str, str]:
    """The API's environment, built like tests/conftest.py's ``service_env``."""
    # A clean slate: the developer's own settings (or a .env) must not leak in.
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
    env.update(
        DATABASE_URL=backends.database_url,
        REDIS_HOST=REDIS[0],
        REDIS_PORT=str(REDIS[1]),
        REDIS_DB_NAME=str(REDIS_DB),
        RABBITMQ_HOST=RABBIT[0],
        RABBITMQ_PORT=str(RABBIT[1]),
        RABBITMQ_VHOST=backends.vhost,
        RABBITMQ_USER="guest",
        RABBITMQ_PASS="guest",
        S3_ENDPOINT_URL=backends.s3_endpoint,
        S3_BUCKET="aimarket-bench",
        AWS_ACCESS_KEY="testing",
        AWS_SECRET_KEY="testing",
        MARKETPLACE_TOKEN=TOKEN,
        WEBHOOK_SECRET="whsec_" + "b" * 43 + "=",
        LOG_LEVEL="WARNING",
        # Limits off: no worker drains the queue, so MAX_QUEUE_DEPTH would refuse most submits;
        # the per-user checks are off too, so the figures stay comparable with earlier ones.
        RATE_LIMIT_PER_MINUTE="0",
        MAX_ACTIVE_TASKS_PER_USER="0",
        MAX_QUEUE_DEPTH="0",
        # The API runs the code of the tree this file is in, as the baseline does, even when
        # the installed (editable) package points at another checkout.
        PYTHONPATH=str(ROOT),
    )
    return env


#: --with-limits: every check runs on every submit, none refuses (each submit is a new user,
#: the queue bound is far above what a run queues).
LIMITS_ON = {
    "RATE_LIMIT_PER_MINUTE": "60",
    "RATE_LIMIT_BURST": "10",
    "MAX_ACTIVE_TASKS_PER_USER": "20",
    "MAX_QUEUE_DEPTH": "1000000000",
}


# --- The API process ----------------------------------------------------------------------


@dataclass
class Api:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    start_live_s: float = 0.0
    start_ready_s: float = 0.0

    def output(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_api(env: dict[str, str], stack: contextlib.ExitStack, profile: Path | None = None) -> Api:
    port = free_port()
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aimarket-bench-")))
    log_path = workdir / "api.log"
    handle = stack.enter_context(log_path.open("wb"))
    # cwd is an empty folder, so no .env of the checkout is read.
    command = [str(BIN / "aimarket"), "serve", "--port", str(port)]
    if profile is not None:
        # cProfile sees the event loop's thread, where the request handling runs; it writes
        # its file when uvicorn exits (see stop()). It slows the API: not for the figures.
        command = [sys.executable, "-m", "cProfile", "-o", str(profile.resolve()), *command]
    spawned = time.perf_counter()
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )

    def stop() -> None:
        # uvicorn re-raises the signal it caught once it has shut down: SIGTERM then kills
        # the process before cProfile writes its file, a KeyboardInterrupt lets it write.
        proc.send_signal(signal.SIGINT if profile is not None else signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(quietly("stop the API", stop))
    api = Api(proc, f"http://127.0.0.1:{port}", log_path)

    def poll(path: str, deadline: float) -> float:
        with httpx.Client(timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("the API exited:\n" + api.output())
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(api.url + path).status_code == 200:
                        return time.perf_counter() - spawned
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the API did not answer {path}:\n" + api.output())
                # A short poll: the interval bounds the error of the start-up figure.
                time.sleep(0.01)

    deadline = time.perf_counter() + 60
    api.start_live_s = poll("/health/live", deadline)
    api.start_ready_s = poll("/health/ready", deadline)
    log(
        f"API up on {api.url}: live after {api.start_live_s:.2f}s, "
        f"ready after {api.start_ready_s:.2f}s"
    )
    return api


def summarize_log(text: str) -> dict[str, Any]:
    """Line counts of the API's log and its warnings and errors (the API runs at WARNING, so
    INFO lines there mean a logger that ignores LOG_LEVEL)."""
    lines = text.splitlines()
    problems = [
        line[:300] for line in lines if line.startswith(("WARNING", "ERROR", "CRITICAL", "Trace"))
    ]
    return {
        "lines": len(lines),
        "info": sum(line.startswith("INFO") for line in lines),
        "problems": problems[:50],
    }


@dataclass
class ProcessInfo:
    rss_mib: float
    peak_rss_mib: float
    threads: int
    torch_mapped: bool
    torch_mappings: list[str]


def inspect_process(pid: int) -> ProcessInfo:
    status: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    # Proof from inside the process that torch was never loaded: no torch library mapped.
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    torch = sorted({line.split()[-1] for line in maps if "libtorch" in line or "/torch/" in line})
    return ProcessInfo(
        rss_mib=int(status["VmRSS"].split()[0]) / 1024,
        peak_rss_mib=int(status["VmHWM"].split()[0]) / 1024,
        threads=int(status["Threads"]),
        torch_mapped=bool(torch),
        torch_mappings=torch[:5],
    )


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
    from api.services import Services
    from core.settings import load_settings
    from db.models import Task, TaskStatus
    from db.tasks import insert_task, utcnow
    from workflows.inputs import validate_input

    # Services.build is exactly what the API process builds: the same Database (pool size),
    # the broker from setup_broker (confirm_delivery=True) and the compiled plans.
    services = Services.build(load_settings(env, env_file=None))
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


# --- Machine description ------------------------------------------------------------------


def machine() -> dict[str, str]:
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        info["postgres"] = pg_execute("SHOW server_version") or "?"
    with contextlib.suppress(Exception):
        info["rabbitmq"] = rabbitmqctl("version")
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return info


# --- Report -------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    api = report["api_process"]
    w = max(len(p["name"]) for p in report["phases"]) + 2  # width of the name column
    lines = [
        f"aimarket submit benchmark, {m['date']}, commit {m.get('commit', '?')}",
        f"machine: {m['nproc']} x {m['cpu']}, Python {m['python']}, "
        f"PostgreSQL {m.get('postgres', '?')}, RabbitMQ {m.get('rabbitmq', '?')}",
        f"{report['requests']} operations per phase after {report['warmup']} warm-up, "
        f"concurrency {report['concurrency']}",
        "",
        f"{'phase':<{w}}{'ops/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'errors':>8}",
    ]
    for p in report["phases"]:
        lines.append(
            f"{p['name']:<{w}}{p['rate_per_s']:>9.0f}{p['p50_ms']:>9.1f}{p['p90_ms']:>9.1f}"
            f"{p['p99_ms']:>9.1f}{p['max_ms']:>9.1f}{sum(p['errors'].values()):>8}"
        )
    lines.append("")
    for name, ratio in report["ratios"].items():
        verdict = "meets" if ratio >= 0.5 else "BELOW"
        lines.append(f"ratio {name}: {ratio:.2f} ({verdict} the 0.5 bar)")
    for name, ratio in report["cpu_ratios"].items():
        lines.append(f"CPU per task, {name} (server side, no HTTP client): {ratio:.2f}")
    lines += ["", "CPU ms per accepted task (machine busy share during the phase):"]
    for p in report["phases"]:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in p["cpu_ms_per_op"].items())
        lines.append(f"  {p['name']:<{w}}{parts} ({p['machine_busy']:.0%} busy)")
        loops = ", ".join(f"{k} {v:.0%}" for k, v in p["main_thread_busy"].items())
        lines.append(f"  {'':<{w}}main thread (event loop) busy: {loops}")
        if p["postgres_started"] or p["postgres_ended"]:
            lines.append(
                f"  {'':<{w}}Postgres connections: {p['postgres_started']} new, "
                f"{p['postgres_ended']} closed"
            )
        if p["other_top_ms_per_op"]:
            top = ", ".join(f"{k} {v:.2f}" for k, v in p["other_top_ms_per_op"].items())
            lines.append(f"  {'':<{w}}busiest in other: {top}")
    lines += ["", "median ms of each part of a bare-loop task:"]
    for p in report["phases"]:
        if p["parts_p50_ms"]:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in p["parts_p50_ms"].items())
            lines.append(f"  {p['name']:<{w}}{parts}")
    lines += ["", f"background CPU load before the run: {report['background_busy']:.0%}"]
    for p in report["phases"]:
        if p["errors"]:
            lines += ["", f"errors in {p['name']}: {p['errors']}, first ones:"]
            lines += [f"  {sample}" for sample in p["error_samples"]]
    api_log = report["api_log"]
    lines += [
        "",
        f"API log (LOG_LEVEL=WARNING): {api_log['lines']} lines, {api_log['info']} at INFO, "
        f"{len(api_log['problems'])} warnings or errors",
        *[f"  {line}" for line in api_log["problems"][:10]],
    ]
    lines += [
        "",
        f"API start-up: {api['start_live_s']:.2f}s spawn -> first 200 on /health/live, "
        f"{api['start_ready_s']:.2f}s -> /health/ready",
        f"API after the run: RSS {api['rss_mib']:.0f} MiB (peak {api['peak_rss_mib']:.0f}), "
        f"{api['threads']} threads, libtorch mapped: {'YES' if api['torch_mapped'] else 'no'}",
    ]
    return "\n".join(lines)


# --- Main ---------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same way out as Ctrl-C, so the clean-up runs.
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="measured ops per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=100, help="ops before each phase")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--no-concurrent-baseline",
        action="store_true",
        help="skip the bare loop with --concurrency coroutines",
    )
    parser.add_argument(
        "--shared-pool",
        action="store_true",
        help="drive the API through one httpx.AsyncClient with a pool of C connections "
        "(default: C clients with one connection each; the shared pool costs more CPU)",
    )
    parser.add_argument(
        "--with-limits",
        action="store_true",
        help="then measure a second API with the per-user limits and the queue bound on (set "
        "high enough never to refuse: every submit pays for the checks, none is refused)",
    )
    parser.add_argument(
        "--profile-api",
        type=Path,
        metavar="FILE",
        help="run the API under cProfile and write its stats to FILE (slows it down)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--requests and --concurrency must be >= 1, --warmup >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_reachable()
    run_tag = uuid.uuid4().hex[:6]
    idle_load = background_busy()
    log(f"background CPU load before the run: {idle_load:.0%}")
    if idle_load > 0.15:
        log("warning: the machine is busy with other work; figures will be low and noisy")
    with contextlib.ExitStack() as stack:
        backends = setup_backends(stack)
        env = service_env(backends)
        api = start_api(env, stack, args.profile_api)

        async def measure_all() -> list[Phase]:
            api_phase = await measure_api(api, args, run_tag)
            return [api_phase, *await measure_bare(env, args, run_tag, api.proc.pid)]

        phases = asyncio.run(measure_all())
        # Read after the load, while the process still holds what the run made it allocate.
        info = inspect_process(api.proc.pid)
        limited = None
        if args.with_limits:
            limited_api = start_api({**env, **LIMITS_ON}, stack)
            limited = asyncio.run(measure_api(limited_api, args, run_tag + "L", "API+limits"))
        details = machine()
        api_log = summarize_log(api.log_path.read_text(errors="replace"))
    api_rate = phases[0].rate_per_s
    ratios = {f"API / {p.name}": api_rate / p.rate_per_s for p in phases[1:] if p.rate_per_s > 0}
    if limited is not None and api_rate > 0:
        # The limits' cost: measured after the plain API, on a queue and a table that have
        # grown by one phase (a slight handicap for the limited one).
        ratios["API+limits / API"] = limited.rate_per_s / api_rate

    # Server-side CPU per task (no HTTP client) against the bare loop's: unlike the rates, this
    # hardly moves with neighbours, and it does not charge the load generator to the API.
    def server_cpu(phase: Phase, own: str) -> float:
        use = phase.cpu_ms_per_op
        return sum(use.get(k, 0.0) for k in (own, "postgres", "rabbitmq", "irq"))

    cpu_ratios = {
        f"{p.name} / API": server_cpu(p, "bench") / server_cpu(phases[0], "api")
        for p in phases[1:]
        if server_cpu(phases[0], "api") > 0
    }
    if limited is not None:
        phases.append(limited)
    return {
        "machine": details,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "phases": [asdict(p) for p in phases],
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "background_busy": idle_load,
        "api_log": api_log,
        "api_process": {
            "start_live_s": api.start_live_s,
            "start_ready_s": api.start_ready_s,
            **asdict(info),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        report = run(args)
    except KeyboardInterrupt:
        log("interrupted; backends removed")
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"failed: {exc}")
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
