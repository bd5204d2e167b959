"""The runtime benchmark's stack: fresh backends (a Postgres database migrated by Alembic,
with a trigger that NOTIFYs when a task ends, two RabbitMQ vhosts, a flushed Redis database, a
temporary DATA_DIR), the environment of aimarket's processes, and starting and stopping the
processes each side runs (``aimarket serve``, ``aimarket worker``, the hand-written Dramatiq
worker). Part of ``bench/runtime.py``.

Every clean-up is registered on the caller's ``contextlib.ExitStack`` as soon as its thing
exists, so an error or Ctrl-C halfway removes what was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
RABBIT = ("127.0.0.1", 5672)
REDIS_DB = 13
WORKFLOW = "bench-noop"
STAGES = 5
STAGE_DIR = ROOT / "bench" / "runtime_stages"
CHANNEL = "bench_task_done"
TOKEN = "bench-token-" + uuid.uuid4().hex[:8]


def log(message: str) -> None:
    print(f"[runtime] {message}", file=sys.stderr, flush=True)


# --- Backends ----------------------------------------------------------------------------


def require_reachable() -> None:
    for name, addr in (("Postgres", PG), ("Redis", REDIS), ("RabbitMQ", RABBIT)):
        try:
            socket.create_connection(addr, timeout=2).close()
        except OSError:
            raise SystemExit(f"runtime: {name} is not reachable at {addr[0]}:{addr[1]}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def pg(sql: str, database: str = "postgres") -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(host=PG[0], port=PG[1], user="postgres", database=database)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def quietly(what: str, action: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            action()
        except Exception as exc:  # cleanup goes on with the rest
            log(f"cleanup: could not {what}: {exc}")

    return run


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
    asyncio.run(pg(f'CREATE DATABASE "{database}"'))
    stack.callback(
        quietly(
            f"drop {database}",
            lambda: asyncio.run(pg(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')),
        )
    )
    url = f"postgresql+asyncpg://postgres@{PG[0]}:{PG[1]}/{database}"
    from db.migrate import upgrade

    upgrade(url, log=False)
    asyncio.run(pg(TRIGGER_SQL, database))
    vhosts = []
    for side in ("hw", "am"):
        vhost = f"aimarket-bench-rt-{tag}-{side}"
        rabbitmqctl("add_vhost", vhost)
        stack.callback(
            quietly(f"delete {vhost}", functools.partial(rabbitmqctl, "delete_vhost", vhost))
        )
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        vhosts.append(vhost)
    import redis

    def flush() -> None:
        redis.Redis(host=REDIS[0], port=REDIS[1], db=REDIS_DB).flushdb()

    flush()
    stack.callback(quietly(f"flush Redis db {REDIS_DB}", flush))
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rt-")))
    log(f"database {database}, vhosts {vhosts[0]} and {vhosts[1]}, Redis db {REDIS_DB}")
    return Backends(url, database, vhosts[0], vhosts[1], data_dir)


def amqp_url(vhost: str) -> str:
    from urllib.parse import quote

    return f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{quote(vhost, safe='')}"


def redis_url() -> str:
    return f"redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}"


def clean_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def service_env(backends: Backends, count_dir: Path | None) -> dict[str, str]:
    """The environment of the API and the worker, like tests/conftest.py's service_env
    without S3 (media stay in DATA_DIR; the no-op workflow has none)."""
    modules = ["bench.runtime_stages.noop"]
    if count_dir is not None:
        modules.append("bench.runtime_stages.counting")
    env = clean_env()
    env.update(
        MARKETPLACE_TOKEN=TOKEN,
        DATABASE_URL=backends.database_url,
        REDIS_HOST=REDIS[0],
        REDIS_PORT=str(REDIS[1]),
        REDIS_DB_NAME=str(REDIS_DB),
        RABBITMQ_HOST=RABBIT[0],
        RABBITMQ_PORT=str(RABBIT[1]),
        RABBITMQ_VHOST=backends.vhost_am,
        DATA_DIR=str(backends.data_dir),
        WORKFLOWS_DIRS=str(STAGE_DIR / "workflows"),
        ACTOR_MODULES=",".join(modules),
        WEBHOOK_SECRET="whsec_" + "b" * 43 + "=",
        DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        LOG_LEVEL="WARNING",
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
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
