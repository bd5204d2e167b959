"""The final callback survives a receiver that is down for a while, on the real stack: its
tries follow CALLBACK_RETRY_SCHEDULE (short here), the waits between them are held by
RabbitMQ (a worker killed between two tries loses nothing), every try is recorded with what
came of it, and a delivery that gives up is counted, listed as gave_up and dead-lettered.

A deployment of this module's own (its own vhost): the session's worker takes none of it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from core.delays import wait_queue
from tests.conftest import (
    TOKEN,
    Deployment,
    Hooks,
    deploy,
    fresh_vhost,
    kill_tree,
    ready_messages,
    start_worker,
)
from tests.support import verify

AUTH = {"authorization": f"Bearer {TOKEN}"}
ADMIN = {"authorization": f"Bearer admin-{TOKEN}"}
WAIT_S = 3


@pytest.fixture(scope="module")
def deployment(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with fresh_vhost("callbacks") as vhost:
        env = {
            **service_env,
            "RABBITMQ_VHOST": vhost,
            "CALLBACK_RETRY_SCHEDULE": f"0,{WAIT_S}s,{WAIT_S}s,{WAIT_S}s",
            "ADMIN_TOKEN": f"admin-{TOKEN}",
        }
        deployed = deploy(env, tmp_path_factory.mktemp("callbacks"))
        yield deployed
        deployed.stop()


def submit(deployment: Deployment, callback_url: str) -> str:
    body = {"workflow": "dag-join", "user_id": "later", "callback_url": callback_url}
    response = httpx.post(deployment.url + "/v1/tasks", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def tries(deployment: Deployment, task_id: str, count: int) -> list[dict[str, Any]]:
    """The recorded tries of the task's final callback, once there are ``count``."""
    deadline = time.monotonic() + 60
    while True:
        response = httpx.get(
            f"{deployment.url}/v1/tasks/{task_id}/callbacks", headers=AUTH, timeout=30
        )
        found = [a for a in response.json()["attempts"] if a["webhook_id"].endswith(":succeeded")]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, (found, deployment.output())
        time.sleep(0.1)


def at(attempt: dict[str, Any], key: str = "created_at") -> float:
    return datetime.fromisoformat(attempt[key]).timestamp()


def test_a_receiver_down_for_two_tries_gets_the_result_across_a_worker_restart(
    deployment: Deployment, hooks: Hooks
) -> None:
    hooks.answers["/later"] = [503, 503]
    task_id = submit(deployment, hooks.url + "/later")
    (first,) = tries(deployment, task_id, 1)
    assert (first["attempt"], first["status_code"], first["outcome"]) == (1, 503, "retrying")
    assert at(first, "next_attempt_at") - at(first) == pytest.approx(WAIT_S, abs=0.5)

    # The next try waits in RabbitMQ, not in the worker: kill the worker.
    vhost = deployment.env["RABBITMQ_VHOST"]
    queue = wait_queue("callbacks", WAIT_S * 1000)
    deadline = time.monotonic() + 10
    while ready_messages(vhost, queue) != 1:
        assert time.monotonic() < deadline, "the next try is not waiting in RabbitMQ"
        time.sleep(0.05)
    kill_tree(deployment.worker)
    # Its wait over, the try is in the callbacks queue, for whichever worker comes next.
    deadline = time.monotonic() + WAIT_S + 10
    while ready_messages(vhost, "callbacks") != 1:
        assert time.monotonic() < deadline, "the try did not come back from its wait"
        time.sleep(0.1)
    assert ready_messages(vhost, queue) == 0
    deployment.worker = start_worker(deployment.env, deployment.workdir, threads=2)

    calls = hooks.wait("/later", 3)
    assert [c["answered"] for c in calls] == [503, 503, 200]
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1
    secret = deployment.env["WEBHOOK_SECRET"]
    assert all(verify(secret, c["headers"], c["raw"]) for c in calls)
    assert calls[-1]["body"]["status"] == "succeeded"
    listed = tries(deployment, task_id, 3)
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in listed] == [
        (1, 503, "retrying"),
        (2, 503, "retrying"),
        (3, 200, "delivered"),
    ]
    assert at(listed[2]) - at(listed[1]) >= WAIT_S - 0.1
    assert listed[2]["next_attempt_at"] is None
    time.sleep(WAIT_S + 1)
    assert len(hooks.wait("/later", 3)) == 3  # nothing after the delivery


def test_a_delivery_that_gives_up_is_recorded_counted_and_dead_lettered(
    deployment: Deployment, hooks: Hooks
) -> None:
    path = f"/down-{uuid.uuid4().hex[:6]}"
    hooks.answers[path] = [503] * 4
    task_id = submit(deployment, hooks.url + path)
    listed = tries(deployment, task_id, 4)
    assert [(a["attempt"], a["outcome"]) for a in listed] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "retrying"),
        (4, "gave_up"),
    ]
    assert listed[3]["next_attempt_at"] is None
    deadline = time.monotonic() + 30
    while True:
        letters = httpx.get(
            deployment.url + "/v1/admin/dead-letters", headers=ADMIN, timeout=30
        ).json()["items"]
        mine = [x for x in letters if x["task_id"] == task_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    (letter,) = mine
    assert letter["actor"] == "task.callback"
    assert letter["queue"] == "callbacks"
    assert "gave up after 4 tries" in (letter["error"] or "")
    # The task itself succeeded: only its callback failed.
    task = httpx.get(f"{deployment.url}/v1/tasks/{task_id}", headers=AUTH, timeout=30).json()
    assert task["status"] == "succeeded"
    # An operator retries it once the receiver is back: one more try, delivered.
    retried = httpx.post(
        f"{deployment.url}/v1/admin/dead-letters/{letter['message_id']}/retry",
        headers=ADMIN,
        timeout=30,
    )
    assert retried.status_code == 200, retried.text
    assert tries(deployment, task_id, 5)[4]["outcome"] == "delivered"
