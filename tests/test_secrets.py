"""Secrets never reach the logs or an error body (issue 6 §6): the marketplace and admin
tokens, the webhook key, and a secret a marketplace puts in its callback URL's query string;
checked on the log of a whole service (embedded: the API and its workers in one process) at
DEBUG, after requests that touch each of them, with wrong tokens too."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import TOKEN, Receiver, embedded_env, serve, stop

ADMIN = "admin-" + uuid.uuid4().hex
WEBHOOK_KEY = base64.b64encode(uuid.uuid4().bytes * 2).decode()
CALLBACK_SECRET = "cb-" + uuid.uuid4().hex


def test_no_secret_in_logs_or_error_bodies(
    tmp_path: Path, tiny_models: dict[str, Path], extra_workflows: Path, receiver: Receiver
) -> None:
    env = embedded_env(tmp_path / "data", tiny_models, extra_workflows, receiver)
    env |= {
        "LOG_LEVEL": "DEBUG",
        "ADMIN_TOKEN": ADMIN,
        "WEBHOOK_SECRET": "whsec_" + WEBHOOK_KEY,
        "MARKETPLACE_CALLBACK": f"{receiver.url}?key={CALLBACK_SECRET}",
    }
    api = serve(env, tmp_path)
    bodies: list[str] = []
    try:
        with httpx.Client(base_url=api.url, timeout=30) as c:
            market = {"authorization": f"Bearer {TOKEN}"}
            # Wrong tokens, close to the real ones: the answer must not echo what was sent.
            for path, token in (("/v1/workflows", TOKEN + "x"), ("/v1/admin/sweep", ADMIN[:-1])):
                wrong = c.request(
                    "GET" if path == "/v1/workflows" else "POST",
                    path,
                    headers={"authorization": f"Bearer {token}"},
                )
                assert wrong.status_code == 401, wrong.text
                bodies.append(wrong.text)
            marketplace_on_admin = c.post("/v1/admin/sweep", headers=market)
            assert marketplace_on_admin.status_code == 401
            bodies.append(marketplace_on_admin.text)
            assert c.post(
                "/v1/admin/sweep", headers={"authorization": f"Bearer {ADMIN}"}
            ).is_success
            created = c.post(
                "/v1/tasks",
                headers=market,
                json={"workflow": "dag-join", "user_id": "secrets", "input": {"word": "hi"}},
            )
            assert created.status_code == 202, created.text
            task_id = created.json()["task_id"]
            called = receiver.wait_for(task_id, timeout=60)  # signed with the key, to the URL
            assert called["_path"].endswith(CALLBACK_SECRET)
            bad = c.post("/v1/tasks", headers=market, json={"workflow": "nope", "user_id": "u"})
            bodies.append(bad.text)
            time.sleep(0.5)
    finally:
        stop(api.proc)
    log = api.proc.log.read_text(errors="replace")
    assert "DEBUG" in log  # the most the service ever writes
    for secret in (TOKEN, ADMIN, WEBHOOK_KEY, CALLBACK_SECRET):
        assert secret not in log, f"a secret ({secret[:6]}...) is in the log"
        for body in bodies:
            assert secret not in body
    # Nor the wrong ones a client sent.
    assert ADMIN[:-1] not in log
    assert TOKEN + "x" not in log


pytestmark = pytest.mark.timeout(180)
