"""X-User-Scope: a marketplace acting for one of its users sees only that user's tasks
(issue 6 §6), on the real API process with Postgres, Redis and RabbitMQ behind it."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import Proc

pytestmark = pytest.mark.usefixtures("worker")


def as_user(user: str) -> dict[str, str]:
    return {"x-user-scope": user}


@pytest.fixture
def alice_task(client: httpx.Client) -> dict[str, str]:
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    response = client.post(
        "/v1/tasks",
        json={"workflow": "dag-join", "user_id": alice, "input": {"word": "hi"}},
        headers=as_user(alice),
    )
    assert response.status_code == 202, response.text
    return {"user": alice, "task_id": response.json()["task_id"]}


def test_the_scoped_user_reads_its_own_task(
    client: httpx.Client, alice_task: dict[str, str]
) -> None:
    task_id, alice = alice_task["task_id"], alice_task["user"]
    headers = as_user(alice)
    assert client.get(f"/v1/tasks/{task_id}", headers=headers).status_code == 200
    assert client.get(f"/v1/tasks/{task_id}/callbacks", headers=headers).status_code == 200
    listed = client.get("/v1/tasks", headers=headers)  # user_id may be left out
    assert listed.status_code == 200, listed.text
    assert [t["task_id"] for t in listed.json()["tasks"]] == [task_id]
    stats = client.get("/v1/stats", headers=headers)
    assert stats.status_code == 200, stats.text
    assert stats.json()["user_id"] == alice


def test_another_users_task_looks_missing(
    client: httpx.Client, alice_task: dict[str, str], worker: Proc
) -> None:
    task_id = alice_task["task_id"]
    bob = as_user("bob")
    missing = client.get(f"/v1/tasks/{uuid.uuid4()}", headers=bob)
    for path in (f"/v1/tasks/{task_id}", f"/v1/tasks/{task_id}/callbacks"):
        response = client.get(path, headers=bob)
        assert response.status_code == 404, (path, response.text)
        # The same answer as an id that does not exist: nothing tells them apart.
        assert response.json()["code"] == missing.json()["code"] == "not_found"
    assert client.get(f"/v1/tasks/{task_id}/events", headers=bob).status_code == 404
    cancel = client.post(f"/v1/tasks/{task_id}/cancel", headers=bob)
    assert cancel.status_code == 404
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] != "cancelled"
    # Without a scope the marketplace still sees everything it submitted.
    assert client.get(f"/v1/tasks/{task_id}").status_code == 200


def test_lists_stats_and_submissions_for_another_user_are_refused(
    client: httpx.Client, alice_task: dict[str, str]
) -> None:
    bob = as_user("bob")
    alice = alice_task["user"]
    for path in (f"/v1/tasks?user_id={alice}", f"/v1/stats?user_id={alice}"):
        response = client.get(path, headers=bob)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["code"] == "user_scope_mismatch"
        assert response.json()["field"] == "user_id"
    response = client.post(
        "/v1/tasks",
        json={"workflow": "dag-join", "user_id": alice, "input": {"word": "x"}},
        headers=bob,
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "user_scope_mismatch"
    mine = client.get("/v1/tasks", headers=bob).json()["tasks"]
    assert mine == []  # nothing was stored for bob's refused submission


def test_without_a_scope_user_id_is_required(client: httpx.Client) -> None:
    for path in ("/v1/tasks", "/v1/stats"):
        response = client.get(path)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["field"] == "user_id"
