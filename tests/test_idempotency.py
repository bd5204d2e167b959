"""Idempotency-Key on POST /v1/tasks, and the body size limit, against the real `aimarket
serve` process (Postgres) and the embedded one (SQLite). No worker: tasks stay queued."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pika
import pytest

from tests.conftest import TOKEN, Api
from tests.support import rows_for


@pytest.fixture(autouse=True)
def drain(rabbitmq_vhost: str) -> Iterator[None]:
    """No worker runs here: drop what these tests queued, so later tests (test_api counts
    the messages in the queues) see the queues as they were."""
    yield
    params = pika.ConnectionParameters(
        "127.0.0.1", 5672, rabbitmq_vhost, pika.PlainCredentials("guest", "guest")
    )
    connection = pika.BlockingConnection(params)
    try:
        for queue in ("default", "musicgen", "audiogen"):
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
            except pika.exceptions.ChannelClosedByBroker:
                continue  # never declared: nothing to drop
    finally:
        connection.close()


def body(user_id: str, prompt: str = "calm piano", **extra: Any) -> dict[str, Any]:
    return {
        "workflow": "text2music",
        "user_id": user_id,
        "input": {"prompt": prompt, "duration": 5},
        **extra,
    }


def submit(client: httpx.Client, payload: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"idempotency-key": key} if key is not None else {}
    return client.post("/v1/tasks", json=payload, headers=headers)


def test_replay_returns_the_same_task(client: httpx.Client, database_url: str) -> None:
    user, key = f"idem-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    first = submit(client, body(user), key)
    assert first.status_code == 202, first.text
    task_id = first.json()["task_id"]
    assert first.headers["location"] == f"/v1/tasks/{task_id}"

    # The same body with its keys in another order is the same request.
    payload = body(user)
    again = submit(client, dict(reversed(list(payload.items()))), key)
    assert again.status_code == 200, again.text
    assert again.headers["location"] == f"/v1/tasks/{task_id}"
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["task_id"] == task_id
    # The replay is the task's view now: a worker may have moved it on since the first answer.
    current = client.get(f"/v1/tasks/{task_id}").json()
    stable = ("task_id", "workflow", "user_id", "input", "created_at")
    assert {k: again.json()[k] for k in stable} == {k: current[k] for k in stable}
    assert first.json()["task_id"] == current["task_id"]
    assert first.json()["input"] == again.json()["input"]
    assert rows_for(database_url, user) == 1

    # Without a key, or with another key, the same body is a new task.
    assert submit(client, body(user), None).json()["task_id"] != task_id
    assert submit(client, body(user), str(uuid.uuid4())).json()["task_id"] != task_id
    assert rows_for(database_url, user) == 3


def test_same_key_with_another_body_is_a_conflict(client: httpx.Client, database_url: str) -> None:
    user, key = f"idem-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    assert submit(client, body(user), key).status_code == 202
    changes = [
        body(user, prompt="loud drums"),
        body(user, callback_url="https://example.com/hook"),
        {**body(user), "workflow": "text2sound"},
        {**body(user), "input": {"prompt": "calm piano", "duration": 6}},
    ]
    for changed in changes:
        answer = submit(client, changed, key)
        assert answer.status_code == 409, answer.text
        assert answer.json()["code"] == "idempotency_conflict"
        assert answer.json()["field"] == "Idempotency-Key"
    assert rows_for(database_url, user) == 1


def test_the_key_belongs_to_its_user(client: httpx.Client, database_url: str) -> None:
    key = str(uuid.uuid4())
    alice, bob = f"idem-a-{uuid.uuid4().hex[:8]}", f"idem-b-{uuid.uuid4().hex[:8]}"
    first = submit(client, body(alice), key)
    other = submit(client, body(bob), key)
    assert (first.status_code, other.status_code) == (202, 202)
    assert first.json()["task_id"] != other.json()["task_id"]
    assert rows_for(database_url, alice) == rows_for(database_url, bob) == 1


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_an_empty_or_long_key_is_refused(client: httpx.Client, database_url: str, key: str) -> None:
    user = f"idem-{uuid.uuid4().hex[:8]}"
    answer = submit(client, body(user), key)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "Idempotency-Key"
    assert rows_for(database_url, user) == 0
    # 200 characters is the longest key accepted.
    assert submit(client, body(user), "k" * 200).status_code == 202


def test_concurrent_submissions_make_one_task(api_url: str, database_url: str) -> None:
    user, key = f"idem-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    n = 20
    barrier = threading.Barrier(n)
    answers: list[httpx.Response | BaseException] = [RuntimeError("not run")] * n

    def one(i: int) -> None:
        with httpx.Client(
            base_url=api_url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60
        ) as c:
            barrier.wait()
            try:
                answers[i] = submit(c, body(user), key)
            except BaseException as exc:
                answers[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    responses = [a for a in answers if isinstance(a, httpx.Response)]
    assert len(responses) == n, answers
    assert sorted(r.status_code for r in responses) == [200] * (n - 1) + [202], [
        r.text for r in responses
    ]
    assert len({r.json()["task_id"] for r in responses}) == 1
    assert rows_for(database_url, user) == 1


def test_embedded_mode_replays(embedded_api: Api) -> None:
    user, key = f"idem-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    with httpx.Client(
        base_url=embedded_api.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as c:
        first = submit(c, body(user), key)
        assert first.status_code == 202, first.text
        again = submit(c, body(user), key)
        assert again.status_code == 200, again.text
        assert again.json()["task_id"] == first.json()["task_id"]
        assert again.headers["location"] == first.headers["location"]
        conflict = submit(c, body(user, prompt="something else"), key)
        assert conflict.status_code == 409
        assert conflict.json()["code"] == "idempotency_conflict"
        tasks = c.get("/v1/tasks", params={"user_id": user}).json()["tasks"]
        assert [t["task_id"] for t in tasks] == [first.json()["task_id"]]


def test_the_header_is_documented(client: httpx.Client) -> None:
    schema = client.get("/schema/openapi.json").json()
    post = schema["paths"]["/v1/tasks"]["post"]
    header = next(p for p in post["parameters"] if p["name"].lower() == "idempotency-key")
    assert header["in"] == "header"
    assert header["required"] is False
    assert {"200", "202", "409", "413"} <= set(post["responses"])


def test_a_body_over_the_limit_is_refused(client: httpx.Client, database_url: str) -> None:
    user = f"big-{uuid.uuid4().hex[:8]}"
    big = {**body(user), "input": {"prompt": "x" * 1_100_000, "duration": 5}}
    answer = submit(client, big, str(uuid.uuid4()))
    assert answer.status_code == 413, answer.text
    assert answer.json()["code"] == "body_too_large"
    assert rows_for(database_url, user) == 0
