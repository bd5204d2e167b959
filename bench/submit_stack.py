"""The submit benchmark's stack: fresh backends (a Postgres database migrated by Alembic, a
RabbitMQ vhost, a flushed Redis database, moto's S3 server), the API subprocess
(``aimarket serve``) started and stopped around a run, and what is read from that process
afterwards (its log, its memory, whether libtorch is mapped). Part of ``bench/submit.py``.

Every clean-up is registered on the caller's ``contextlib.ExitStack`` as soon as its thing
exists, so an error or Ctrl-C halfway removes what was made.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.stack import (
    BIN,
    Voice,
    add_vhost,
    backend_env,
    clean_env,
    create_database,
    flush_redis,
    free_port,
)

REDIS_DB = 12  # its own: the tests use 11, bench/runtime.py 13

VOICE = Voice("bench")
log = VOICE.log
quietly = VOICE.quietly
require_reachable = VOICE.require_reachable


# --- Backends -----------------------------------------------------------------------------


@dataclass
class Backends:
    database_url: str
    vhost: str
    s3_endpoint: str


def setup_backends(stack: contextlib.ExitStack) -> Backends:
    """Fresh, isolated backends; each clean-up is registered as soon as its thing exists."""
    tag = uuid.uuid4().hex[:10]

    db_name = f"aimarket_bench_{tag}"
    url = create_database(VOICE, stack, db_name)
    log(f"database {db_name} migrated")

    vhost = f"aimarket-bench-{tag}"
    add_vhost(VOICE, stack, vhost)
    log(f"RabbitMQ vhost {vhost} created")

    flush_redis(VOICE, stack, REDIS_DB)

    from moto.server import ThreadedMotoServer

    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    stack.callback(quietly("stop the S3 server", s3.stop))
    return Backends(url, vhost, f"http://127.0.0.1:{port}")


def service_env(backends: Backends) -> dict[str, str]:
    """The API's environment, built like tests/conftest.py's ``service_env``."""
    env = clean_env()
    env.update(backend_env(backends.database_url, REDIS_DB, backends.vhost))
    env.update(
        RABBITMQ_USER="guest",
        RABBITMQ_PASS="guest",
        S3_ENDPOINT_URL=backends.s3_endpoint,
        S3_BUCKET="aimarket-bench",
        AWS_ACCESS_KEY="testing",
        AWS_SECRET_KEY="testing",
        # Limits off: no worker drains the queue, so MAX_QUEUE_DEPTH would refuse most submits;
        # the per-user checks are off too, so the figures stay comparable with earlier ones.
        RATE_LIMIT_PER_MINUTE="0",
        MAX_ACTIVE_TASKS_PER_USER="0",
        MAX_QUEUE_DEPTH="0",
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
