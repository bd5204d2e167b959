"""Fixtures that give tests the real services of this machine.

Postgres, Redis and RabbitMQ are the machine's own; S3 is moto's server on loopback. Each test
session gets its own Postgres database (built by the Alembic migrations), its own RabbitMQ
vhost and its own Redis database index, so runs never see each other's messages or rows.
Under CI=true a missing service fails the run; locally it skips the tests that need it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

# Helpers shared by several test modules; their asserts report as a test module's would.
pytest.register_assert_rewrite("tests.support")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "test-token-" + uuid.uuid4().hex[:8]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
RABBIT = ("127.0.0.1", 5672)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(addr: tuple[str, int]) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(addr, timeout=1):
        return True
    return False


def need(name: str, addr: tuple[str, int]) -> None:
    """Fail under CI, skip elsewhere, when a real service is not there."""
    if reachable(addr):
        return
    message = f"{name} is not reachable at {addr[0]}:{addr[1]}"
    if IN_CI:
        pytest.fail(message + " (CI must start it: see .ci/run)")
    pytest.skip(message)


# --- Postgres ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database, migrated to head by Alembic (never create_all)."""
    need("Postgres", PG)
    name = f"aimarket_test_{uuid.uuid4().hex[:10]}"
    _psql(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    from db.migrate import upgrade

    upgrade(url)
    yield url
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _psql(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(host=PG[0], port=PG[1], user="postgres", database="postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


# --- Redis and RabbitMQ -----------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_db() -> int:
    need("Redis", REDIS)
    import redis

    # AIMARKET_TEST_REDIS_DB lets two test sessions run side by side (each flushes its own).
    index = int(os.environ.get("AIMARKET_TEST_REDIS_DB", "11"))
    redis.Redis(host=REDIS[0], port=REDIS[1], db=index).flushdb()
    return index


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    need("RabbitMQ", RABBIT)
    with fresh_vhost("test") as vhost:
        yield vhost


@contextlib.contextmanager
def amqp(vhost: str) -> Iterator[Any]:
    """A blocking pika connection to ``vhost`` of this machine's RabbitMQ, closed afterwards."""
    import pika

    params = pika.ConnectionParameters(
        RABBIT[0], RABBIT[1], vhost, pika.PlainCredentials("guest", "guest")
    )
    connection = pika.BlockingConnection(params)
    try:
        yield connection
    finally:
        connection.close()


def ready_messages(vhost: str, queue: str) -> int:
    """Messages waiting in ``queue`` (declared passively: it must exist)."""
    with amqp(vhost) as connection:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)


@contextlib.contextmanager
def fresh_vhost(purpose: str) -> Iterator[str]:
    """A RabbitMQ vhost of its own, deleted afterwards: a deployment whose messages no other
    worker of the session takes."""
    vhost = f"aimarket-{purpose}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


# --- S3 (moto's server, real HTTP on loopback) --------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


# --- Models -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random checkpoints written by the project's own `models make-tiny`."""
    base = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("musicgen", "audiogen"):
        subprocess.run(
            [str(BIN / "aimarket"), "models", "make-tiny", str(base / kind), "--kind", kind],
            check=True,
            capture_output=True,
        )
        out[kind] = base / kind
    return out


# --- The whole service as subprocesses ------------------------------------------------------


@pytest.fixture(scope="session")
def extra_workflows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workflow folder an operator might add; `broken-model` fails in its generate stage."""
    folder = tmp_path_factory.mktemp("workflows")
    (folder / "broken-model.yaml").write_text(
        (ROOT / "tests" / "data" / "broken-model.yaml").read_text()
    )
    return folder


@pytest.fixture(scope="session")
def service_env(
    database_url: str,
    redis_db: int,
    rabbitmq_vhost: str,
    s3_endpoint: str,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> dict[str, str]:
    """The environment of an operator's deployment, pointing at this session's backends."""
    return {
        **base_env(tiny_models, extra_workflows, receiver),
        "DATABASE_URL": database_url,
        "REDIS_HOST": REDIS[0],
        "REDIS_PORT": str(REDIS[1]),
        "REDIS_DB_NAME": str(redis_db),
        "RABBITMQ_HOST": RABBIT[0],
        "RABBITMQ_PORT": str(RABBIT[1]),
        "RABBITMQ_VHOST": rabbitmq_vhost,
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_BUCKET": "aimarket-test",
        "AWS_ACCESS_KEY": "testing",
        "AWS_SECRET_KEY": "testing",
        "LOG_LEVEL": "INFO",
    }


def base_env(
    tiny_models: dict[str, Path], extra_workflows: Path, receiver: Receiver
) -> dict[str, str]:
    """What every test deployment shares: a clean environment (a developer's own settings
    must not leak into the tests), the token, the tiny models and the test workflows."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
    env.update(
        MARKETPLACE_TOKEN=TOKEN,
        # Where tasks submitted without a callback_url are reported.
        MARKETPLACE_CALLBACK=receiver.url + "?default=1",
        MUSIC_GEN_MODEL=str(tiny_models["musicgen"]),
        AUDIO_GEN_MODEL=str(tiny_models["audiogen"]),
        WORKFLOWS_DIRS=f"{extra_workflows},{ROOT / 'tests' / 'data' / 'dag'}",
        ACTOR_MODULES="tests.stage_fixtures",
        PYTHONPATH=str(ROOT),
        PYTHONFAULTHANDLER="1",
        DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # Test receivers listen on loopback, which callbacks may reach only when allowed.
        CALLBACK_ALLOWLIST="127.0.0.1",
        AUDIO_URL_ALLOWLIST="127.0.0.1",
        WEBHOOK_SECRET="whsec_" + "a" * 43 + "=",
        # Callbacks retried in a second, not hours (tests/test_webhooks.py sets its own).
        CALLBACK_RETRY_SCHEDULE="0,500ms,500ms",
        # Tests submit many tasks as one user, fast: the limit tests turn these back on.
        RATE_LIMIT_PER_MINUTE="0",
        MAX_ACTIVE_TASKS_PER_USER="0",
        MAX_QUEUE_DEPTH="0",
    )
    return env


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Dramatiq's master forks its worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def kill_tree(proc: Proc) -> None:
    """SIGKILL a process and every process below it, as a power cut would."""
    pids = [proc.proc.pid, *descendants(proc.proc.pid)]
    for pid in pids:
        kill(pid)
    proc.proc.wait(10)


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> Proc:
    handle = log.open("wb")
    proc = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)
    return Proc(proc, log)


def stop(proc: Proc) -> None:
    proc.proc.terminate()
    try:
        proc.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.proc.kill()


@dataclass
class Api:
    url: str
    proc: Proc


@pytest.fixture(scope="session")
def api(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`aimarket serve` on a free port against the real backends, once ready."""
    api = serve(service_env, tmp_path_factory.mktemp("api"))
    yield api
    stop(api.proc)


@pytest.fixture(scope="session")
def api_url(api: Api) -> str:
    return api.url


def start_worker(env: dict[str, str], workdir: Path, threads: int = 4) -> Proc:
    """`aimarket worker` consuming every queue, as a developer runs it."""
    proc = start(
        [str(BIN / "aimarket"), "worker", "--threads", str(threads)],
        env,
        workdir / f"worker-{uuid.uuid4().hex[:6]}.log",
        workdir,
    )
    time.sleep(1.0)
    if proc.proc.poll() is not None:
        pytest.fail("the worker exited:\n" + proc.output())
    return proc


@dataclass
class Deployment:
    """An API and a worker of a test's own (a vhost of its own, say)."""

    url: str
    api: Proc
    worker: Proc
    env: dict[str, str]
    workdir: Path

    def output(self) -> str:
        return "\n".join(p.output() for p in (self.api, self.worker))

    def stop(self) -> None:
        stop(self.api)
        stop(self.worker)


def deploy(env: dict[str, str], workdir: Path) -> Deployment:
    worker = start_worker(env, workdir, threads=2)
    api = serve(env, workdir)
    return Deployment(api.url, api.proc, worker, env, workdir)


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """`aimarket worker` consuming every queue, as a developer runs it."""
    proc = start_worker(service_env, tmp_path_factory.mktemp("worker"))
    yield proc
    stop(proc)


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as c:
        yield c


# --- Embedded mode: one process, nothing configured but the models -------------------------


def embedded_env(
    data_dir: Path, tiny_models: dict[str, Path], extra_workflows: Path, receiver: Receiver
) -> dict[str, str]:
    """What a newcomer has: no database, broker, Redis or S3; just the (tiny) models."""
    return {**base_env(tiny_models, extra_workflows, receiver), "DATA_DIR": str(data_dir)}


def serve(env: dict[str, str], workdir: Path, port: int | None = None) -> Api:
    """Start `aimarket serve` and wait until it is ready."""
    port = port or free_port()
    proc = start(
        [str(BIN / "aimarket"), "serve", "--port", str(port)], env, workdir / "api.log", workdir
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.proc.poll() is not None:
            pytest.fail("the API exited:\n" + proc.output())
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                return Api(url, proc)
        if time.monotonic() > deadline:
            stop(proc)
            pytest.fail("the API did not become ready:\n" + proc.output())
        time.sleep(0.2)


@pytest.fixture(scope="session")
def embedded_api(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("embedded")
    api = serve(embedded_env(workdir / "data", tiny_models, extra_workflows, receiver), workdir)
    yield api
    stop(api.proc)


@dataclass
class Stack:
    """A running service: `services` (API + worker processes on the real backends) or
    `embedded` (one `aimarket serve` process, nothing configured)."""

    mode: str
    url: str
    procs: list[Proc]

    def output(self) -> str:
        return "\n".join(p.output() for p in self.procs)


@pytest.fixture(params=["services", "embedded"])
def stack(request: pytest.FixtureRequest) -> Stack:
    if request.param == "services":
        api: Api = request.getfixturevalue("api")
        worker: Proc = request.getfixturevalue("worker")
        return Stack("services", api.url, [api.proc, worker])
    api = request.getfixturevalue("embedded_api")
    return Stack("embedded", api.url, [api.proc])


@pytest.fixture
def stack_client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as c:
        yield c


# --- Callback receiver ----------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    event: threading.Condition = field(default_factory=threading.Condition)
    status: int = 200

    def wait_for(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        """The first callback body for ``task_id``."""
        deadline = time.monotonic() + timeout
        with self.event:
            while True:
                for body in self.calls:
                    if body.get("task_id") == task_id:
                        return body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no callback for {task_id} within {timeout}s")
                self.event.wait(left)


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    """A local HTTP server that records every callback POSTed to it."""
    port = free_port()
    rec = Receiver(url=f"http://127.0.0.1:{port}/hook")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with rec.event:
                rec.calls.append({**json.loads(body), "_path": self.path})
                rec.event.notify_all()
            self.send_response(rec.status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()


# --- Webhook receiver with scripted answers (tests/test_webhooks.py, test_callback_schedule.py)


class Hooks:
    """A receiver whose answers each test scripts per path; it records headers and body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls: list[dict[str, Any]] = []
        self.answers: dict[str, list[int]] = {}
        self.cond = threading.Condition()
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                path = self.path
                with hooks.cond:
                    queue = hooks.answers.get(path, [])
                    status = queue.pop(0) if queue else 200
                    hooks.calls.append(
                        {
                            "path": path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "raw": body,
                            "body": json.loads(body),
                            "answered": status,
                        }
                    )
                    hooks.cond.notify_all()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("location", hooks.url + "/followed")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, path: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [c for c in self.calls if c["path"] == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)} calls to {path}, wanted {count}")
                self.cond.wait(left)


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.server.shutdown()


# --- The admin stack (tests/test_admin.py, tests/test_sweep.py) -----------------------------


ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
#: A queue no worker of the admin stack reads: its messages wait there.
PARKED = "parked"
PARKED_WORKFLOW = f"""\
name: pipe-parked
version: 1
description: A pipeline whose first stage waits in a queue no worker reads.
input: {{}}
stages:
  - id: first
    actor: test.echo
    queue: {PARKED}
  - id: callback
    actor: task.callback
"""


@dataclass
class AdminStack:
    env: dict[str, str]
    api: Api
    worker: Proc
    database_url: str

    def output(self) -> str:
        return f"--- api\n{self.api.proc.output()}\n--- worker\n{self.worker.output()}"


@pytest.fixture(scope="session")
def admin_stack(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AdminStack]:
    """API + worker with ADMIN_TOKEN, on a database and a vhost of their own. The periodic
    sweep is slowed to once an hour: the tests run it through POST /v1/admin/sweep. The
    worker reads the queues `default` and `callbacks` (all the test workflows need), not
    PARKED. One stack for the whole session: tests/test_admin.py and tests/test_sweep.py share
    it (a fixture of this conftest, not of either module)."""
    from db.migrate import upgrade

    with contextlib.ExitStack() as cleanup:
        name = f"aimarket_admin_{uuid.uuid4().hex[:10]}"
        _psql(f'CREATE DATABASE "{name}"')
        cleanup.callback(_psql, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        upgrade(database_url)
        vhost = f"aimarket-admin-{uuid.uuid4().hex[:8]}"
        rabbitmqctl("add_vhost", vhost)
        cleanup.callback(rabbitmqctl, "delete_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        folder = tmp_path_factory.mktemp("admin-stack")
        (folder / "pipe-parked.yaml").write_text(PARKED_WORKFLOW)
        env = {
            **service_env,
            "DATABASE_URL": database_url,
            "RABBITMQ_VHOST": vhost,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "SWEEP_INTERVAL_S": "3600",
            "EXTRA_QUEUES": PARKED,
            "WORKFLOWS_DIRS": f"{service_env['WORKFLOWS_DIRS']},{folder}",
        }
        api = serve(env, folder)
        cleanup.callback(stop, api.proc)
        worker = start(
            [str(BIN / "aimarket"), "worker", "-Q", "default,callbacks", "-t", "4"],
            env,
            folder / "worker.log",
            folder,
        )
        cleanup.callback(stop, worker)
        yield AdminStack(env, api, worker, database_url)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


@pytest.fixture
def admin(admin_stack: AdminStack) -> Iterator[httpx.Client]:
    """A client of the admin stack holding the admin token."""
    with httpx.Client(
        base_url=admin_stack.api.url,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    ) as c:
        yield c


@pytest.fixture
def market(admin_stack: AdminStack) -> Iterator[httpx.Client]:
    """A client of the admin stack holding the marketplace token."""
    with httpx.Client(
        base_url=admin_stack.api.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as c:
        yield c
