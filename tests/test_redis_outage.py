"""Redis stopped in the middle of a run, then started again: a real redis-server of this
test's own on a free port, with an API and a worker of their own (their own RabbitMQ vhost,
so the session's worker, whose Redis is fine, takes none of these tasks).

While Redis is down: reads serve the durable row with the live parts left out and marked
(``live_unavailable``), ``/events`` too; submissions are accepted and succeed (audio is handed
between stages through the media store instead); the sweep still runs; readiness says
``down: redis``. Once Redis is back, nothing is left degraded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.state import OUTAGE_RETRY_S
from tests.conftest import TOKEN, Deployment, Receiver, deploy, free_port, fresh_vhost, need

AUTH = {"authorization": f"Bearer {TOKEN}"}
ADMIN = {"authorization": f"Bearer admin-{TOKEN}"}


@dataclass
class RedisServer:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need("Redis", ("127.0.0.1", 6379))  # the machine's redis-server binary is there too
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deployment(
    service_env: dict[str, str],
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    with fresh_vhost("outage") as vhost:
        env = {
            **service_env,
            "REDIS_PORT": str(redis_server.port),
            "REDIS_DB_NAME": "0",
            "RABBITMQ_VHOST": vhost,
            "ADMIN_TOKEN": f"admin-{TOKEN}",
        }
        deployed = deploy(env, tmp_path_factory.mktemp("outage"))
        yield deployed
        deployed.stop()


def submit(client: httpx.Client, workflow: str, **inputs: Any) -> str:
    body = {"workflow": workflow, "user_id": "outage", "input": inputs}
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def events(client: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    """Every event of the task's stream, until it ends."""
    found: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/tasks/{task_id}/events", timeout=120) as stream:
        assert stream.status_code == 200
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                found.append({"event": name, **json.loads(line.removeprefix("data:"))})
    return found


def test_redis_down_degrades_and_comes_back(
    deployment: Deployment, redis_server: RedisServer, receiver: Receiver
) -> None:
    with httpx.Client(base_url=deployment.url, headers=AUTH, timeout=30) as client:
        # Up: the worker loads its models, a task runs with its live state shown.
        warm = submit(client, "text2music", prompt="warm up", duration=1)
        assert receiver.wait_for(warm)["status"] == "succeeded", deployment.output()

        redis_server.stop()
        ready = httpx.get(deployment.url + "/health/ready", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("down")

        # A running task (a 5 s stage): its durable row, the live parts marked unavailable.
        slow = submit(client, "pipeline-cancel")
        deadline = time.monotonic() + 60
        while True:
            response = client.get(f"/v1/tasks/{slow}")
            assert response.status_code == 200, response.text
            view = response.json()
            if view["status"] == "running" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert view["status"] == "running", deployment.output()
        assert view["live_unavailable"] is True
        assert view["stages"] == {}
        assert view["progress"] is None
        streamed = events(client, slow)
        assert streamed[0]["live_unavailable"] is True
        assert streamed[-1]["event"] == "done"
        assert streamed[-1]["status"] == "succeeded"
        assert receiver.wait_for(slow)["status"] == "succeeded"

        # A generation: its audio and pictures reach S3 through the hand-off in the media
        # store, and the client gets them.
        music = submit(client, "text2music", prompt="no redis", duration=1)
        called = receiver.wait_for(music)
        assert called["status"] == "succeeded", deployment.output()
        outputs = {o["name"]: o for o in client.get(f"/v1/tasks/{music}").json()["outputs"]}
        assert set(outputs) == {"audio", "waveform", "spectrogram"}
        audio = httpx.get(outputs["audio"]["url"], timeout=30)
        assert audio.status_code == 200
        assert audio.content[:4] == b"RIFF"

        # The sweep runs under this process's own lock.
        sweep = httpx.post(deployment.url + "/v1/admin/sweep", headers=ADMIN, timeout=60)
        assert sweep.status_code == 200, sweep.text
        assert sweep.json()["ran"] is True

        redis_server.start()
        deadline = time.monotonic() + 30
        while httpx.get(deployment.url + "/health/ready", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "readiness did not come back"
            time.sleep(0.2)
        # A process that saw Redis fail skips it for OUTAGE_RETRY_S (its writes meanwhile are
        # dropped, like those of the outage): past that, nothing is degraded.
        time.sleep(OUTAGE_RETRY_S + 0.5)
        slow = submit(client, "pipeline-cancel")
        deadline = time.monotonic() + 60
        while True:
            view = client.get(f"/v1/tasks/{slow}").json()
            if view["stages"].get("slow", {}).get("status") == "running":
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.1)
        assert view["live_unavailable"] is False
        assert receiver.wait_for(slow)["status"] == "succeeded"
    log = deployment.output()
    assert "Redis is unreachable; live task state degrades" in log
    assert "Redis answers again" in log
    assert "Traceback" not in log, log
