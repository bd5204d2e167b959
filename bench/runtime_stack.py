"""The runtime benchmark's stack: fresh backends (a Postgres database migrated by Alembic,
with a trigger that NOTIFYs when a task ends, two RabbitMQ vhosts, a flushed Redis database, a
temporary DATA_DIR), the environment of aimarket's processes, and starting and stopping the
processes each side runs (``aimarket serve``, ``aimarket worker``, the hand-written Dramatiq
worker). Part of ``bench/runtime.py``.

Every clean-up is registered on the caller's ``contextlib.ExitStack`` as soon as its thing
exists, so an error or Ctrl-C halfway removes what was made.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.stack import (
    RABBIT,
    REDIS,
    ROOT,
    Voice,
    add_vhost,
    backend_env,
    create_database,
    flush_redis,
    pg_execute,
)
from bench.stack import clean_env as bare_env
from bench.stats import CLK_TCK

REDIS_DB = 13  # its own: the tests use 11, bench/submit.py 12
WORKFLOW = "bench-noop"
STAGES = 5
STAGE_DIR = ROOT / "bench" / "runtime_stages"
CHANNEL = "bench_task_done"

VOICE = Voice("runtime")
log = VOICE.log
require_reachable = VOICE.require_reachable


# --- Backends ----------------------------------------------------------------------------


#: Tells LISTENers of the bench's database when a task ends (bench-owned database only).
TRIGGER_SQL = f"""
CREATE FUNCTION bench_task_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{CHANNEL}', NEW.id || ':' || NEW.status);
  RETURN NEW;
END $$;
CREATE TRIGGER bench_task_done AFTER UPDATE OF status ON tasks FOR EACH ROW
  WHEN (NEW.status IN ('succeeded', 'failed', 'cancelled')) EXECUTE FUNCTION bench_task_done();
"""


@dataclass
class Backends:
    database_url: str
    database: str
    vhost_hw: str
    vhost_am: str
    data_dir: Path


def setup_backends(stack: contextlib.ExitStack) -> Backends:
    tag = uuid.uuid4().hex[:8]
    database = f"aimarket_bench_rt_{tag}"
    url = create_database(VOICE, stack, database, alembic_log=False)
    pg_execute(TRIGGER_SQL, database)
    vhosts = []
    for side in ("hw", "am"):
        vhost = f"aimarket-bench-rt-{tag}-{side}"
        add_vhost(VOICE, stack, vhost)
        vhosts.append(vhost)
    flush_redis(VOICE, stack, REDIS_DB)
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rt-")))
    log(f"database {database}, vhosts {vhosts[0]} and {vhosts[1]}, Redis db {REDIS_DB}")
    return Backends(url, database, vhosts[0], vhosts[1], data_dir)


def amqp_url(vhost: str) -> str:
    from urllib.parse import quote

    return f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{quote(vhost, safe='')}"


def redis_url() -> str:
    return f"redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}"


def clean_env() -> dict[str, str]:
    """bench/stack.py's clean environment, keeping this machine's OpenBLAS settings too."""
    return bare_env("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def service_env(backends: Backends, count_dir: Path | None) -> dict[str, str]:
    """The environment of the API and the worker, like tests/conftest.py's service_env
    without S3 (media stay in DATA_DIR; the no-op workflow has none)."""
    modules = ["bench.runtime_stages.noop"]
    if count_dir is not None:
        modules.append("bench.runtime_stages.counting")
    env = clean_env()
    env.update(backend_env(backends.database_url, REDIS_DB, backends.vhost_am))
    env.update(
        DATA_DIR=str(backends.data_dir),
        WORKFLOWS_DIRS=str(STAGE_DIR / "workflows"),
        ACTOR_MODULES=",".join(modules),
        DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        # Off, as in bench/submit.py: the bench submits fast, as one user.
        RATE_LIMIT_PER_MINUTE="0",
        MAX_ACTIVE_TASKS_PER_USER="0",
        MAX_QUEUE_DEPTH="0",
    )
    if count_dir is not None:
        env["BENCH_COUNT_DIR"] = str(count_dir)
    return env


# --- Processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()}")


def start(
    stack: contextlib.ExitStack, name: str, args: list[str], env: dict[str, str], folder: Path
) -> Proc:
    log_path = folder / f"{name}.log"
    handle = log_path.open("wb")
    proc = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle.close()

    def stop() -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    stack.callback(stop)
    return Proc(name, proc, log_path)


def children(pid: int) -> list[int]:
    """Every process below ``pid``."""
    below: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        below.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in below.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def busiest_child(pid: int) -> int:
    """The process below ``pid`` that used the most CPU (Dramatiq's worker process)."""
    kids = children(pid)
    return max(kids, key=cpu_s) if kids else pid


def wait_http(url: str, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} in {timeout:g} s:\n{proc.output()}")


def wait_file(path: Path, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        proc.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready in {timeout:g} s:\n{proc.output()}")
        time.sleep(0.1)
