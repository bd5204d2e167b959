"""DAG workflows end to end on the real RabbitMQ: parallel join, a failing branch, a retry
that succeeds, a timeout, fan-out, and duplicate deliveries that must not double a join."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import dramatiq
import httpx
import pika
import pytest
import redis

from tests.conftest import Proc, Receiver

pytestmark = pytest.mark.usefixtures("worker")


def run(client: httpx.Client, receiver: Receiver, workflow: str, **inputs: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/tasks",
        json={
            "workflow": workflow,
            "user_id": "dag",
            "input": inputs,
            "callback_url": receiver.url,
        },
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    receiver.wait_for(task_id, timeout=90)
    return dict(client.get(f"/v1/tasks/{task_id}").json())


def runs(service_env: dict[str, str], task_id: str, stage_id: str) -> int:
    r = redis.Redis(host="127.0.0.1", port=6379, db=int(service_env["REDIS_DB_NAME"]))
    return int(r.get(f"aimarket:test:runs:{task_id}:{stage_id}") or 0)


def callbacks(receiver: Receiver, task_id: str) -> list[dict[str, Any]]:
    return [c for c in receiver.calls if c.get("task_id") == task_id]


def test_parallel_branches_join_once(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    task = run(client, receiver, "dag-join", word="hey")
    assert task["status"] == "succeeded", worker.output()
    stages = task["stages"]
    assert stages["left"]["output"]["value"] == {"side": "left", "word": "hey"}
    assert stages["join"]["output"]["value"] == {"both": ["left", "right"]}
    assert stages["skipped"]["status"] == "skipped"  # its `when` was false
    assert stages["after"]["output"]["value"] == {"saw_skipped": None}
    for stage in ("start", "left", "right", "join", "after"):
        assert runs(service_env, task["task_id"], stage) == 1, stage
    assert runs(service_env, task["task_id"], "skipped") == 0
    assert len(callbacks(receiver, task["task_id"])) == 1  # the `finally` handler, once


def test_failing_branch_fails_the_task_and_runs_handlers(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    task = run(client, receiver, "dag-fail")
    assert task["status"] == "failed", worker.output()
    assert task["error"]["code"] == "stage_failed"
    assert "RuntimeError: boom" in task["error"]["message"]
    [called] = callbacks(receiver, task["task_id"])
    assert called["status"] == "failed"
    task_id = task["task_id"]
    assert runs(service_env, task_id, "bad") == 2  # max_attempts: 2
    assert runs(service_env, task_id, "join") == 0  # never joined
    deadline = time.monotonic() + 10
    while runs(service_env, task_id, "note") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runs(service_env, task_id, "note") == 1  # the on_failure handler


def test_retry_that_succeeds(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    task = run(client, receiver, "dag-retry")
    assert task["status"] == "succeeded", worker.output()
    assert task["stages"]["done"]["output"]["value"] == {"attempt": 2}
    assert runs(service_env, task["task_id"], "flaky") == 2


def test_timeout_fails_with_code_timeout(
    client: httpx.Client, receiver: Receiver, worker: Proc
) -> None:
    started = time.monotonic()
    task = run(client, receiver, "dag-timeout")
    assert task["status"] == "failed", worker.output()
    assert task["error"]["code"] == "timeout"
    assert time.monotonic() - started < 20  # not the stage's 30 s


def test_a_task_past_its_deadline_fails_timeout_and_runs_nothing_more(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    # A pipeline (no needs/when/foreach): `slow` sleeps 5 s, past the workflow's deadline_s of
    # 2 s; `after` must not start, and the client hears `failed` with code `timeout`, once.
    task = run(client, receiver, "pipeline-deadline")
    assert task["status"] == "failed", worker.output()
    assert task["error"]["code"] == "timeout"
    assert "deadline of 2 s" in task["error"]["message"]
    task_id = task["task_id"]
    assert runs(service_env, task_id, "slow") == 1
    time.sleep(1.0)  # anything queued after `slow` would have run by now
    assert runs(service_env, task_id, "after") == 0
    [called] = callbacks(receiver, task_id)
    assert (called["status"], called["error"]["code"]) == ("failed", "timeout")


def test_foreach_fans_out_and_joins_in_order(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    task = run(client, receiver, "dag-foreach", n=5)
    assert task["status"] == "succeeded", worker.output()
    assert task["stages"]["total"]["output"]["value"] == {"values": [0, 1, 2, 3, 4]}
    assert task["stages"]["fan"]["items"] == 5
    assert task["stages"]["fan"]["items_done"] == 5
    assert runs(service_env, task["task_id"], "fan") == 5
    empty = run(client, receiver, "dag-foreach", n=0)
    assert empty["status"] == "succeeded"
    assert empty["stages"]["total"]["output"]["value"] == {"values": []}


def publish_duplicate(vhost: str, task_id: str, workflow: str, stage_id: str) -> None:
    """Publish a stage message again, as RabbitMQ does when an ack is lost."""
    message = dramatiq.Message(
        queue_name="default",
        actor_name="test.echo",
        args=(task_id, workflow, stage_id, {"$dag": {"item": -1}}),
        kwargs={},
        options={},
    )
    params = pika.ConnectionParameters(
        "127.0.0.1", 5672, vhost, pika.PlainCredentials("guest", "guest")
    )
    connection = pika.BlockingConnection(params)
    try:
        connection.channel().basic_publish("", "default", message.encode())
    finally:
        connection.close()


def test_duplicate_deliveries_do_not_double_a_join(
    client: httpx.Client,
    receiver: Receiver,
    service_env: dict[str, str],
    rabbitmq_vhost: str,
    worker: Proc,
) -> None:
    task = run(client, receiver, "dag-join", word="dup")
    task_id = task["task_id"]
    for stage in ("left", "right", "join", "left", "right"):
        publish_duplicate(rabbitmq_vhost, task_id, "dag-join", stage)
    time.sleep(3)  # let the worker take every duplicate
    for stage in ("left", "right", "join", "after"):
        assert runs(service_env, task_id, stage) == 1, (stage, worker.output())
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded"
    assert len(callbacks(receiver, task_id)) == 1


def test_concurrent_claims_have_one_winner(database_url: str) -> None:
    """The join guarantee itself, on the real Postgres: 20 racing claims, one winner."""
    from db import stage_runs
    from db.engine import Database
    from db.models import RunStatus, Task
    from db.tasks import insert_task, utcnow

    async def race() -> list[bool]:
        db = Database(database_url)
        try:
            task_id = str(uuid.uuid4())
            await insert_task(
                db,
                Task(
                    id=task_id,
                    workflow="w",
                    workflow_version=1,
                    user_id="u",
                    status="running",
                    input={},
                    outputs=[],
                    audio_s=0.0,
                    created_at=utcnow(),
                ),
            )
            claims = [stage_runs.claim(db, task_id, "join", RunStatus.QUEUED) for _ in range(20)]
            return list(await asyncio.gather(*claims))
        finally:
            await db.dispose()

    assert sorted(asyncio.run(race())) == [False] * 19 + [True]


def test_stages_after_aggregate_still_run_then_finally(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    task = run(client, receiver, "dag-after-aggregate")
    assert task["status"] == "succeeded", worker.output()
    assert runs(service_env, task["task_id"], "notify") == 1
    assert task["stages"]["notify"]["status"] == "succeeded"
    assert len(callbacks(receiver, task["task_id"])) == 1
