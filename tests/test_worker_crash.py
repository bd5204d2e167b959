"""Workers that die or are stopped in the middle of a stage, with real processes on the real
RabbitMQ: a SIGKILLed worker's message is redelivered to another worker (at least once), and a
SIGTERMed worker finishes its stage before it exits; in both cases the task succeeds and the
client is called back exactly once.

The module runs its own API and workers on a RabbitMQ vhost of its own, so the session's
worker (which consumes every queue) never takes these messages. The workflow's slow stage
routes to its own queue, ``crashtest``, which only these workers consume (EXTRA_QUEUES).
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import BIN, TOKEN, Api, Proc, Receiver, descendants, kill, serve, start, stop

QUEUE = "crashtest"
# A Redis database of this module's own: the session's (index 11) is flushed when a session
# starts, which another session running at the same time would do under these tests' feet.
REDIS_DB = "14"
SLOW_S = 6

WORKFLOW = f"""\
name: dag-slow
version: 1
description: A slow stage on a queue of its own, then another stage and a callback.
input:
  seconds: {{type: number, minimum: 0, maximum: 30, default: {SLOW_S}}}
stages:
  - id: slow
    actor: test.sleep
    queue: {QUEUE}
    needs: []
    input: {{seconds: input.seconds}}
  - id: done
    actor: test.echo
    input: {{slept: input.seconds}}
finally:
  - id: callback
    actor: task.callback
"""


@pytest.fixture(scope="module")
def crash_env(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The session's backends, but a vhost and a Redis database of this module's own, and the
    dag-slow workflow."""
    vhost = f"aimarket-crash-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    folder = tmp_path_factory.mktemp("crash-workflows")
    (folder / "dag-slow.yaml").write_text(WORKFLOW)
    yield {
        **service_env,
        "RABBITMQ_VHOST": vhost,
        "REDIS_DB_NAME": REDIS_DB,
        "EXTRA_QUEUES": QUEUE,
        "WORKFLOWS_DIRS": f"{service_env['WORKFLOWS_DIRS']},{folder}",
    }
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


@pytest.fixture(scope="module")
def crash_api(crash_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = serve(crash_env, tmp_path_factory.mktemp("crash-api"))
    yield api
    stop(api.proc)


@pytest.fixture
def crash_client(crash_api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=crash_api.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as c:
        yield c


class Workers:
    """The workers a test starts; whatever is still running is stopped at the end."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env = env
        self.folder = folder
        self.procs: list[Proc] = []

    def start(self, name: str) -> Proc:
        args = [str(BIN / "aimarket"), "worker", "-Q", f"default,callbacks,{QUEUE}", "-t", "2"]
        proc = start(args, self.env, self.folder / f"{name}.log", self.folder)
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()}" for p in self.procs)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.proc.poll() is None:
                stop(proc)
            for pid in descendants(proc.proc.pid):  # none unless the master died alone
                kill(pid)


@pytest.fixture
def workers(crash_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    w = Workers(crash_env, tmp_path)
    yield w
    w.stop_all()


def submit(client: httpx.Client, receiver: Receiver) -> str:
    response = client.post(
        "/v1/tasks",
        json={
            "workflow": "dag-slow",
            "user_id": f"crash-{uuid.uuid4().hex[:8]}",
            "input": {},
            "callback_url": receiver.url,
        },
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def runs(env: dict[str, str], task_id: str, stage_id: str) -> int:
    r = redis.Redis(
        host=env["REDIS_HOST"], port=int(env["REDIS_PORT"]), db=int(env["REDIS_DB_NAME"])
    )
    return int(r.get(f"aimarket:test:runs:{task_id}:{stage_id}") or 0)


def wait_until_running(
    env: dict[str, str], client: httpx.Client, task_id: str, workers: Workers
) -> dict[str, Any]:
    """Wait until the slow stage has started (its run counter is 1 and the API says so)."""
    deadline = time.monotonic() + 60
    while True:
        if runs(env, task_id, "slow") >= 1:
            task = dict(client.get(f"/v1/tasks/{task_id}").json())
            if task["stages"].get("slow", {}).get("status") == "running":
                return task
        if time.monotonic() > deadline:
            raise AssertionError("the slow stage never started:\n" + workers.output())
        time.sleep(0.1)


def finish(
    client: httpx.Client, receiver: Receiver, task_id: str, workers: Workers
) -> dict[str, Any]:
    try:
        receiver.wait_for(task_id, timeout=60)
    except AssertionError:
        raise AssertionError(f"no callback for {task_id}:\n" + workers.output()) from None
    time.sleep(1.0)  # a duplicate callback, were there one, would arrive now
    return dict(client.get(f"/v1/tasks/{task_id}").json())


def callbacks(receiver: Receiver, task_id: str) -> list[dict[str, Any]]:
    return [c for c in receiver.calls if c.get("task_id") == task_id]


def test_sigkilled_worker_mid_stage_the_task_completes_on_another(
    crash_env: dict[str, str],
    crash_client: httpx.Client,
    receiver: Receiver,
    workers: Workers,
) -> None:
    a = workers.start("worker-a")
    task_id = submit(crash_client, receiver)
    wait_until_running(crash_env, crash_client, task_id, workers)
    assert runs(crash_env, task_id, "slow") == 1

    # SIGKILL the whole worker: the master and every process it forked. RabbitMQ requeues
    # what the dead connection had not acked, the slow stage's message included.
    doomed = [a.proc.pid, *descendants(a.proc.pid)]
    assert len(doomed) >= 2, "no forked worker process found:\n" + a.output()
    for pid in doomed:
        kill(pid)
    a.proc.wait(timeout=10)
    killed_at = time.monotonic()

    workers.start("worker-b")
    task = finish(crash_client, receiver, task_id, workers)
    took = time.monotonic() - killed_at
    assert task["status"] == "succeeded", (task, workers.output())
    assert task["stages"]["slow"]["status"] == "succeeded"
    assert task["stages"]["done"]["output"]["value"] == {"slept": SLOW_S}
    assert runs(crash_env, task_id, "slow") == 2  # at least once: the redelivery ran it again
    assert runs(crash_env, task_id, "done") == 1
    assert len(callbacks(receiver, task_id)) == 1
    assert took >= SLOW_S  # the stage ran whole again on worker B
    print(f"sigkill: the task ended {took:.1f} s after the kill")


def test_sigterm_mid_stage_finishes_the_stage_then_exits(
    crash_env: dict[str, str],
    crash_client: httpx.Client,
    receiver: Receiver,
    workers: Workers,
) -> None:
    a = workers.start("worker-a")
    task_id = submit(crash_client, receiver)
    wait_until_running(crash_env, crash_client, task_id, workers)

    forked = descendants(a.proc.pid)
    assert forked, "no forked worker process found:\n" + a.output()
    term_at = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    try:
        a.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker did not exit within 30 s:\n" + a.output()) from None
    exited_in = time.monotonic() - term_at
    assert not [pid for pid in forked if Path(f"/proc/{pid}").exists()], "a process stayed"
    after_exit = dict(crash_client.get(f"/v1/tasks/{task_id}").json())
    slow_at_exit = after_exit["stages"]["slow"]["status"]
    runs_at_exit = runs(crash_env, task_id, "slow")

    workers.start("worker-b")
    task = finish(crash_client, receiver, task_id, workers)
    assert task["status"] == "succeeded", (task, workers.output())
    assert len(callbacks(receiver, task_id)) == 1
    assert runs(crash_env, task_id, "done") == 1
    finished_first = slow_at_exit == "succeeded"
    # Dramatiq's default: the worker finishes the message it is running before it exits, and
    # gives back (requeues) what it had only prefetched.
    assert finished_first, (slow_at_exit, a.output())
    assert runs_at_exit == 1
    assert runs(crash_env, task_id, "slow") == 1  # not run again by worker B
    assert exited_in < 30
    print(f"sigterm: exited {exited_in:.1f} s after SIGTERM; slow was {slow_at_exit} at exit")
