"""Embedded mode: `aimarket serve` with nothing configured runs the whole service in one
process; what is configured is used for real; unfinished work survives a restart."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from core.local_media import LocalMediaStore
from core.settings import Settings
from tests.conftest import TOKEN, Api, Receiver, embedded_env, serve, stop

AUTH = {"authorization": f"Bearer {TOKEN}"}


def test_start_up_log_names_each_backend(embedded_api: Api) -> None:
    # The whole log: the session's other tests may have written much since the start-up.
    log = embedded_api.proc.log.read_text(errors="replace")
    assert "database -> sqlite (" in log
    # BATCH_MAX_SIZE (4 by default) + 2: a full batch waits for the model, two threads run on.
    assert "queue    -> in-process (6 worker threads)" in log
    assert "state    -> memory" in log
    assert "media    -> local (" in log
    ready = httpx.get(embedded_api.url + "/health/ready").json()
    assert ready["status"] == "ok"


def test_only_postgres_configured_is_used_for_real_the_rest_embedded(
    tmp_path: Path,
    database_url: str,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> None:
    env = embedded_env(tmp_path / "data", tiny_models, extra_workflows, receiver)
    env["DATABASE_URL"] = database_url
    api = serve(env, tmp_path)
    try:
        log = api.proc.output()
        assert "database -> postgres" in log
        assert "queue    -> in-process" in log
        user = f"pg-{uuid.uuid4().hex[:6]}"
        body = {
            "workflow": "text2sound",
            "user_id": user,
            "input": {"prompt": "hum", "duration": 0.5},
        }
        task_id = httpx.post(api.url + "/v1/tasks", json=body, headers=AUTH).json()["task_id"]
        assert receiver.wait_for(task_id)["status"] == "succeeded", api.proc.output()
        # The row is in the real Postgres database, not in a local SQLite file.
        from tests.support import rows_for

        assert rows_for(database_url, user) == 1
        assert not (tmp_path / "data" / "aimarket.db").exists()
    finally:
        stop(api.proc)


def test_unfinished_task_is_resumed_after_a_crash(
    tmp_path: Path, tiny_models: dict[str, Path], extra_workflows: Path, receiver: Receiver
) -> None:
    env = embedded_env(tmp_path / "data", tiny_models, extra_workflows, receiver)
    api = serve(env, tmp_path)
    body = {"workflow": "text2music", "user_id": "crash", "input": {"prompt": "x", "duration": 1}}
    task_id = httpx.post(api.url + "/v1/tasks", json=body, headers=AUTH).json()["task_id"]
    # The first generation imports torch and audiocraft (seconds): kill the process before
    # it can finish, as a power cut would.
    api.proc.proc.send_signal(signal.SIGKILL)
    api.proc.proc.wait(10)
    assert not any(c.get("task_id") == task_id for c in receiver.calls)

    again = serve(env, tmp_path)
    try:
        called = receiver.wait_for(task_id, timeout=120)
        assert called["status"] == "succeeded", again.proc.output()
        assert "resumed 1 unfinished task(s) after a restart" in again.proc.output()
        task = httpx.get(f"{again.url}/v1/tasks/{task_id}", headers=AUTH).json()
        assert task["status"] == "succeeded"
        # The media written before the restart (and after) is served by the new process.
        assert httpx.get(task["outputs"][0]["url"]).status_code == 200
    finally:
        stop(again.proc)


def test_data_survives_a_restart(
    tmp_path: Path, tiny_models: dict[str, Path], extra_workflows: Path, receiver: Receiver
) -> None:
    env = embedded_env(tmp_path / "data", tiny_models, extra_workflows, receiver)
    api = serve(env, tmp_path)
    try:
        body = {
            "workflow": "text2sound",
            "user_id": "keep",
            "input": {"prompt": "y", "duration": 0.5},
        }
        task_id = httpx.post(api.url + "/v1/tasks", json=body, headers=AUTH).json()["task_id"]
        assert receiver.wait_for(task_id)["status"] == "succeeded"
    finally:
        stop(api.proc)
    again = serve(env, tmp_path)
    try:
        task = httpx.get(f"{again.url}/v1/tasks/{task_id}", headers=AUTH).json()
        assert task["status"] == "succeeded"
        media = httpx.get(task["outputs"][0]["url"])
        assert media.status_code == 200
        assert media.headers["content-type"] == "audio/wav"
        stats = httpx.get(f"{again.url}/v1/stats", params={"user_id": "keep"}, headers=AUTH).json()
        assert stats["workflows"][0]["counts"] == {"succeeded": 1}
    finally:
        stop(again.proc)


def test_token_is_generated_when_unset(
    tmp_path: Path, tiny_models: dict[str, Path], extra_workflows: Path, receiver: Receiver
) -> None:
    env = embedded_env(tmp_path / "data", tiny_models, extra_workflows, receiver)
    del env["MARKETPLACE_TOKEN"]
    api = serve(env, tmp_path)
    try:
        token = (tmp_path / "data" / "token").read_text().strip()
        assert len(token) >= 24
        assert token in api.proc.output()  # the newcomer is told which token to use
        url = api.url + "/v1/workflows"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": f"Bearer {token}"}).status_code == 200
    finally:
        stop(api.proc)


# --- signed local media links --------------------------------------------------------------


def local_store(tmp_path: Path, ttl: int = 60) -> LocalMediaStore:
    store = LocalMediaStore(Settings(data_dir=str(tmp_path), presigned_url_ttl=ttl))
    store.ensure_bucket()
    return store


def test_local_links_expire_and_cannot_be_forged(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    store.put("tasks/a/audio-0.wav", b"data", "audio/wav")
    assert store.size("tasks/a/audio-0.wav") == 4
    url = httpx.URL(store.presign("tasks/a/audio-0.wav"))
    expires, sig = int(url.params["expires"]), url.params["sig"]
    assert store.verify("tasks/a/audio-0.wav", expires, sig)
    assert not store.verify("tasks/b/audio-0.wav", expires, sig)  # another file
    assert not store.verify("tasks/a/audio-0.wav", expires + 1, sig)  # a longer life
    assert not store.verify("tasks/a/audio-0.wav", int(time.time()) - 1, sig)
    # The key lives in the data folder: a new store (a restarted process) accepts old links.
    assert local_store(tmp_path).verify("tasks/a/audio-0.wav", expires, sig)


def test_local_keys_cannot_leave_the_media_folder(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    with pytest.raises(ValueError, match="leaves the media folder"):
        store.path("../token")
    with pytest.raises(ValueError, match="leaves the media folder"):
        store.put("/etc/passwd", b"x", "text/plain")


def test_media_route_refuses_bad_links(embedded_api: Api) -> None:
    base = embedded_api.url + "/media/tasks/x/audio-0.wav"
    far = int(time.time()) + 60
    assert httpx.get(base, params={"expires": far, "sig": "0" * 64}).status_code == 401
    assert httpx.get(base).status_code == 400  # expires and sig are required
    traversal = embedded_api.url + "/media/../../token"
    assert httpx.get(traversal, params={"expires": far, "sig": "0" * 64}).status_code in (401, 404)
