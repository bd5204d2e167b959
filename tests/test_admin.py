"""The admin API: its own token, and the dead letters of the real RabbitMQ (listed with their
error, retried after the cause is fixed, discarded), and of the embedded broker.

The admin tests run their own API and worker (``admin_stack``) on a database and a RabbitMQ
vhost of their own, with ADMIN_TOKEN set: the dead letters they list are theirs alone, and the
sweep of the session's API never sees their tasks (tests/test_sweep.py uses the same stack).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    BIN,
    TOKEN,
    AdminStack,
    Api,
    Receiver,
    embedded_env,
    serve,
    stop,
)
from tests.support import runs, submit, wait_for_status


def letters_of(admin: httpx.Client, task_id: str, **params: Any) -> list[dict[str, Any]]:
    response = admin.get("/v1/admin/dead-letters", params=params)
    assert response.status_code == 200, response.text
    return [d for d in response.json()["items"] if d["task_id"] == task_id]


def wait_for_letter(admin: httpx.Client, task_id: str, timeout: float = 20) -> dict[str, Any]:
    """The task's one dead letter, once the worker has dead-lettered it."""
    deadline = time.monotonic() + timeout
    while True:
        found = letters_of(admin, task_id)
        if found:
            assert len(found) == 1, found
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no dead letter for {task_id}")
        time.sleep(0.2)


# --- The token ---------------------------------------------------------------------------------


def test_admin_api_needs_the_admin_token(admin_stack: AdminStack) -> None:
    url = admin_stack.api.url + "/v1/admin/dead-letters"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthorized"
    # The marketplace's token opens the marketplace API, not this one.
    market = httpx.get(url, headers={"authorization": f"Bearer {TOKEN}"})
    assert market.status_code == 401
    wrong = httpx.get(url, headers={"authorization": f"Bearer {ADMIN_TOKEN}x"})
    assert wrong.status_code == 401
    assert httpx.post(admin_stack.api.url + "/v1/admin/sweep").status_code == 401
    ok = httpx.get(url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200, ok.text
    # ...and the admin token does not open the marketplace API.
    tasks = httpx.get(
        admin_stack.api.url + "/v1/tasks",
        params={"user_id": "x"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert tasks.status_code == 401


def test_admin_api_is_off_without_admin_token(api_url: str) -> None:
    """The session's API has no ADMIN_TOKEN: 403 `admin_disabled`, whatever the token."""
    for headers in ({}, {"authorization": f"Bearer {TOKEN}"}):
        response = httpx.get(api_url + "/v1/admin/dead-letters", headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "admin_disabled"


def test_admin_token_equal_to_marketplace_token_refuses_to_start(
    tmp_path: Path, tiny_models: dict[str, Path], extra_workflows: Path, receiver: Receiver
) -> None:
    env = embedded_env(tmp_path / "data", tiny_models, extra_workflows, receiver)
    env["ADMIN_TOKEN"] = TOKEN
    done = subprocess.run(
        [str(BIN / "aimarket"), "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ADMIN_TOKEN must differ from MARKETPLACE_TOKEN" in done.stdout + done.stderr


def test_admin_routes_are_documented_with_their_scheme(admin_stack: AdminStack) -> None:
    schema = httpx.get(admin_stack.api.url + "/schema/openapi.json").json()
    assert "admin" in schema["components"]["securitySchemes"]
    route = schema["paths"]["/v1/admin/dead-letters"]["get"]
    assert route["security"] == [{"admin": []}]


# --- Dead letters on RabbitMQ ------------------------------------------------------------------


def test_dead_letter_is_listed_then_retried_after_the_fix(
    admin: httpx.Client,
    market: httpx.Client,
    admin_stack: AdminStack,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "broken"
    marker.write_text("the cause of the failure")
    task_id = submit(market, receiver, "dag-marker", marker=str(marker))
    failed = wait_for_status(receiver, task_id, "failed")
    assert failed["error"]["code"] == "stage_failed"

    letter = wait_for_letter(admin, task_id)
    assert letter["queue"] == "default"
    assert letter["actor"] == "test.fail_while_marker"
    assert letter["workflow"] == "dag-marker"
    assert letter["stage"] == "gate"
    assert letter["retries"] == 1  # two attempts
    assert letter["error"].startswith("RuntimeError: marker"), letter
    # The error of the attempt that failed for good, not of the one before (Dramatiq's own).
    assert letter["error"].endswith("(attempt 2)"), letter
    assert "Traceback" in letter["traceback"]
    assert letter["failed_at"] is not None
    assert letter["task_status"] == "failed"
    assert letter["task_error"]["code"] == "stage_failed"
    # Listing leaves it in place; filtering by queue finds it too.
    assert letters_of(admin, task_id, queue="default") == [letter]
    assert letters_of(admin, task_id, queue="callbacks") == []
    assert runs(admin_stack.env, task_id, "gate") == 2

    marker.unlink()  # the operator fixes the cause
    retried = admin.post(f"/v1/admin/dead-letters/{letter['message_id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json() == {
        "message_id": letter["message_id"],
        "queue": "default",
        "action": "retried",
        "reopened": True,
    }
    wait_for_status(receiver, task_id, "succeeded")
    task = market.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "succeeded", admin_stack.output()
    assert runs(admin_stack.env, task_id, "gate") == 3
    assert runs(admin_stack.env, task_id, "done") == 1
    assert letters_of(admin, task_id) == []
    # It is gone: a second retry finds nothing.
    again = admin.post(f"/v1/admin/dead-letters/{letter['message_id']}/retry")
    assert again.status_code == 404
    assert again.json()["code"] == "not_found"


def test_dead_letter_is_discarded(
    admin: httpx.Client, market: httpx.Client, receiver: Receiver, tmp_path: Path
) -> None:
    marker = tmp_path / "broken"
    marker.write_text("x")
    task_id = submit(market, receiver, "dag-marker", marker=str(marker))
    letter = wait_for_letter(admin, task_id)
    gone = admin.post(f"/v1/admin/dead-letters/{letter['message_id']}/discard")
    assert gone.status_code == 200, gone.text
    assert gone.json()["action"] == "discarded"
    assert letters_of(admin, task_id) == []
    assert admin.post(f"/v1/admin/dead-letters/{letter['message_id']}/discard").status_code == 404
    assert market.get(f"/v1/tasks/{task_id}").json()["status"] == "failed"


def test_unknown_dead_letter_is_404(admin: httpx.Client) -> None:
    for action in ("retry", "discard"):
        response = admin.post(f"/v1/admin/dead-letters/{uuid.uuid4()}/{action}")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


def test_retry_of_a_task_past_its_deadline_is_refused(
    admin: httpx.Client,
    market: httpx.Client,
    admin_stack: AdminStack,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """Reopened, a task past its deadline would be ended again by the next sweep: 409, and
    the dead letter stays."""
    marker = tmp_path / "broken"
    marker.write_text("x")
    task_id = submit(market, receiver, "dag-marker", marker=str(marker))
    letter = wait_for_letter(admin, task_id)
    _age(admin_stack.database_url, task_id, 7200)  # TASK_DEADLINE_S is an hour
    refused = admin.post(f"/v1/admin/dead-letters/{letter['message_id']}/retry")
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "deadline_passed"
    assert letters_of(admin, task_id) == [letter]
    assert market.get(f"/v1/tasks/{task_id}").json()["status"] == "failed"
    admin.post(f"/v1/admin/dead-letters/{letter['message_id']}/discard")


def _age(database_url: str, task_id: str, seconds: float) -> None:
    """Move a task's creation ``seconds`` into the past."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute(
                "UPDATE tasks SET created_at = created_at - make_interval(secs => $2) "
                "WHERE id = $1",
                task_id,
                float(seconds),
            )
        finally:
            await conn.close()

    asyncio.run(run())


# --- Dead letters in embedded mode -------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_admin(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("embedded-admin")
    env = embedded_env(workdir / "data", tiny_models, extra_workflows, receiver)
    env |= {"ADMIN_TOKEN": ADMIN_TOKEN, "SWEEP_INTERVAL_S": "3600"}
    api = serve(env, workdir)
    yield api
    stop(api.proc)


def test_embedded_dead_letter_is_listed_and_retried(
    embedded_admin: Api, receiver: Receiver, tmp_path: Path
) -> None:
    market = httpx.Client(
        base_url=embedded_admin.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    admin = httpx.Client(
        base_url=embedded_admin.url,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    with market, admin:
        marker = tmp_path / "broken"
        marker.write_text("x")
        task_id = submit(market, receiver, "dag-marker", marker=str(marker))
        wait_for_status(receiver, task_id, "failed")
        letter = wait_for_letter(admin, task_id)
        assert letter["actor"] == "test.fail_while_marker"
        assert letter["error"].startswith("RuntimeError: marker"), letter
        assert letter["error"].endswith("(attempt 2)"), letter  # the last attempt's
        assert letter["task_status"] == "failed"
        marker.unlink()
        retried = admin.post(f"/v1/admin/dead-letters/{letter['message_id']}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["reopened"] is True
        wait_for_status(receiver, task_id, "succeeded")
        assert market.get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded"
        assert letters_of(admin, task_id) == []
