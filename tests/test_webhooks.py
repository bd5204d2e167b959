"""Signed callbacks (Standard Webhooks), their retries and records, and the SSRF guard.

The service runs embedded (`aimarket serve`, nothing configured) and calls receivers on
loopback only: no test sends a packet to a non-loopback address (check_url gets a stub
resolver, and refused addresses are refused before any connection)."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings, SettingsError, load_settings
from core.signing import secret_key, sign, webhook_secret
from core.ssrf import Allowlist, Unresolvable, UnsafeURL, check_url
from tests.conftest import TOKEN, Api, Hooks, Receiver, embedded_env, serve, stop
from tests.support import verify

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


# --- Signatures ------------------------------------------------------------------------------


def test_signature_matches_the_spec() -> None:
    body = b'{"task_id":"t"}'
    headers = {
        "webhook-id": "t:completed",
        "webhook-timestamp": "1700000000",
        "webhook-signature": sign(SECRET, "t:completed", 1700000000, body),
    }
    assert headers["webhook-signature"].startswith("v1,")
    assert verify(SECRET, headers, body)
    assert not verify(SECRET, headers, body + b" ")
    assert secret_key(SECRET) == b"k" * 32


def test_secret_is_generated_for_embedded_mode_and_required_with_a_database(
    tmp_path: Path,
) -> None:
    embedded = Settings(data_dir=str(tmp_path))
    first = webhook_secret(embedded)
    assert first.startswith("whsec_")
    assert len(secret_key(first)) == 32
    assert webhook_secret(embedded) == first  # kept in DATA_DIR
    assert (tmp_path / "webhook-secret").stat().st_mode & 0o077 == 0
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
        webhook_secret(Settings(data_dir=str(tmp_path), postgres_host="db"))
    assert webhook_secret(Settings(postgres_host="db", webhook_secret=SECRET)) == SECRET
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
        load_settings(environ={"WEBHOOK_SECRET": "not-a-secret"}, env_file=None)


# --- SSRF guard ------------------------------------------------------------------------------


def resolver(*addresses: str) -> Any:
    """A getaddrinfo stand-in answering ``addresses`` for any name."""

    def resolve(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        family = socket.AF_INET6
        return [
            (socket.AF_INET if ":" not in a else family, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    return resolve


def no_dns(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
    raise AssertionError("an IP literal must not be resolved")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.5/hook", "private"),
        ("http://172.16.3.4/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://[::1]/hook", "loopback"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fc00::1]/hook", "private"),
        ("http://[::ffff:169.254.169.254]/hook", "link-local"),
    ],
)
def test_internal_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=reason):
        check_url(url, "", resolve=no_dns)


def test_names_are_checked_by_what_they_resolve_to() -> None:
    with pytest.raises(UnsafeURL, match=r"loopback address: hooks\.example \(127\.0\.0\.1\)"):
        check_url("https://hooks.example/x", "", resolve=resolver("127.0.0.1"))
    # One internal answer among public ones is enough to refuse.
    with pytest.raises(UnsafeURL, match="private"):
        check_url("https://hooks.example/x", "", resolve=resolver("93.184.216.34", "10.1.2.3"))
    check_url("https://hooks.example/x", "", resolve=resolver("93.184.216.34"))
    check_url("https://hooks.example/x", "", resolve=resolver("2606:2800:220:1::"))
    with pytest.raises(Unresolvable):
        check_url("https://nowhere.invalid/x", "", resolve=resolver())


def test_allowlist_names_hosts_and_ranges() -> None:
    allow = "127.0.0.1, 10.0.0.0/8,hooks.internal.,::1"
    check_url("http://127.0.0.1:8000/hook", allow, resolve=no_dns)
    check_url("http://10.9.8.7/hook", allow, resolve=no_dns)
    check_url("http://[::1]/hook", allow, resolve=no_dns)
    check_url("http://HOOKS.internal/hook", allow, resolve=no_dns)  # by name: not resolved
    check_url("http://svc.example/hook", allow, resolve=resolver("10.0.0.5", "::1"))
    with pytest.raises(UnsafeURL, match="private"):
        check_url("http://192.168.0.1/hook", allow, resolve=no_dns)
    with pytest.raises(UnsafeURL, match="http"):
        check_url("ftp://127.0.0.1/hook", allow, resolve=no_dns)
    assert Allowlist.parse(allow).hosts == {"hooks.internal"}


# --- Delivery, for real, to receivers on loopback ------------------------------------------


def _serve(
    factory: pytest.TempPathFactory,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
    **extra: str,
) -> Api:
    workdir = factory.mktemp("webhooks")
    env = embedded_env(workdir / "data", tiny_models, extra_workflows, receiver)
    env.pop("CALLBACK_ALLOWLIST", None)
    env.pop("WEBHOOK_SECRET", None)
    env.update(extra)
    api = serve(env, workdir)
    api.data_dir = workdir / "data"  # type: ignore[attr-defined]
    return api


@pytest.fixture(scope="module")
def allowed_api(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> Iterator[Api]:
    """Loopback allow-listed (as a developer's own machine would be); a generated secret."""
    api = _serve(
        tmp_path_factory, tiny_models, extra_workflows, receiver, CALLBACK_ALLOWLIST="127.0.0.1"
    )
    yield api
    stop(api.proc)


@pytest.fixture(scope="module")
def strict_api(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> Iterator[Api]:
    """No allowlist: every internal address is refused (the default)."""
    api = _serve(tmp_path_factory, tiny_models, extra_workflows, receiver, WEBHOOK_SECRET=SECRET)
    yield api
    stop(api.proc)


def client(api: Api) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)


def submit(api: Api, callback_url: str | None) -> httpx.Response:
    body: dict[str, Any] = {"workflow": "dag-join", "user_id": "hooks", "input": {"word": "hi"}}
    if callback_url is not None:
        body["callback_url"] = callback_url
    with client(api) as c:
        return c.post("/v1/tasks", json=body)


def attempts(api: Api, task_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The recorded tries, once there are ``count`` (a try is recorded after its answer)."""
    deadline = time.monotonic() + timeout
    with client(api) as c:
        while True:
            response = c.get(f"/v1/tasks/{task_id}/callbacks")
            assert response.status_code == 200, response.text
            found: list[dict[str, Any]] = response.json()["attempts"]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


def test_delivery_is_signed(allowed_api: Api, hooks: Hooks) -> None:
    response = submit(allowed_api, hooks.url + "/signed")
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    (call,) = hooks.wait("/signed", 1)
    headers, raw = call["headers"], call["raw"]
    assert call["body"]["task_id"] == task_id
    assert headers["webhook-id"] == f"{task_id}:succeeded"
    assert headers["aimarket-event"] == "completed"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 120
    secret = (allowed_api.data_dir / "webhook-secret").read_text().strip()  # type: ignore[attr-defined]
    assert verify(secret, headers, raw)
    assert not verify(SECRET, headers, raw)
    assert secret not in json.dumps(call["body"])
    (attempt,) = attempts(allowed_api, task_id, 1)
    assert attempt["status_code"] == 200
    assert attempt["webhook_id"] == f"{task_id}:succeeded"
    assert attempt["attempt"] == 1
    assert attempt["error"] is None
    assert attempt["latency_ms"] >= 0
    assert attempt["url"] == hooks.url + "/signed"


def test_retried_delivery_keeps_its_id_and_every_try_is_listed(
    allowed_api: Api, hooks: Hooks
) -> None:
    hooks.answers["/flaky"] = [503]
    task_id = submit(allowed_api, hooks.url + "/flaky").json()["task_id"]
    first, second = hooks.wait("/flaky", 2)
    assert (first["answered"], second["answered"]) == (503, 200)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    secret = (allowed_api.data_dir / "webhook-secret").read_text().strip()  # type: ignore[attr-defined]
    assert verify(secret, second["headers"], second["raw"])
    listed = attempts(allowed_api, task_id, 2)
    assert [(a["attempt"], a["status_code"]) for a in listed] == [(1, 503), (2, 200)]
    assert listed[0]["webhook_id"] == listed[1]["webhook_id"] == f"{task_id}:succeeded"
    assert listed[0]["created_at"] <= listed[1]["created_at"]


def test_intermediate_events_are_sent_when_asked_for(allowed_api: Api, hooks: Hooks) -> None:
    """`events: [started, progress]`: a signed callback when a worker takes the task, one per
    stage that ends and at generation milestones, then the final one; each is the task view
    of its moment. Without `events`, only the final one (the tests above)."""
    body = {
        "workflow": "text2music",
        "user_id": "hooks",
        "input": {"prompt": "a tune", "duration": 1},
        "callback_url": hooks.url + "/events",
        "events": ["started", "progress"],
    }
    with client(allowed_api) as c:
        response = c.post("/v1/tasks", json=body)
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        deadline = time.monotonic() + 90
        while c.get(f"/v1/tasks/{task_id}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the task did not finish"
            time.sleep(0.2)
    time.sleep(1.0)  # deliveries run on their own queue; let the last ones land
    calls = [c for c in hooks.calls if c["path"] == "/events"]
    secret = (allowed_api.data_dir / "webhook-secret").read_text().strip()  # type: ignore[attr-defined]
    assert all(verify(secret, c["headers"], c["raw"]) for c in calls)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_event.setdefault(call["headers"]["aimarket-event"], []).append(call)
    assert set(by_event) == {"started", "progress", "completed"}, [
        c["headers"]["webhook-id"] for c in calls
    ]
    (started,) = by_event["started"]
    assert started["headers"]["webhook-id"] == f"{task_id}:started"
    assert started["body"]["status"] == "running"
    progress_ids = {c["headers"]["webhook-id"] for c in by_event["progress"]}
    assert f"{task_id}:progress:validate" in progress_ids  # a stage that ended
    assert f"{task_id}:progress:generate" in progress_ids
    # Validation does not start the task: it may still wait for a generation worker then.
    assert {c["body"]["status"] for c in by_event["progress"]} <= {"queued", "running"}
    generated = [
        c for c in by_event["progress"] if ":progress:generate" in c["headers"]["webhook-id"]
    ]
    assert all(c["body"]["status"] == "running" for c in generated)
    (final,) = by_event["completed"]
    assert final["headers"]["webhook-id"] == f"{task_id}:succeeded"
    assert final["body"]["status"] == "succeeded"
    # Every delivery is recorded, the intermediate ones included.
    listed = attempts(allowed_api, task_id, len(calls))
    assert {a["webhook_id"] for a in listed} == {c["headers"]["webhook-id"] for c in calls}


def test_unknown_events_are_refused(allowed_api: Api) -> None:
    body = {"workflow": "text2music", "user_id": "hooks", "input": {"prompt": "x"}}
    with client(allowed_api) as c:
        response = c.post("/v1/tasks", json={**body, "events": ["finished"]})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_request"
    assert error["field"] == "events[0]"
    assert "finished" in error["message"]


def test_a_delivery_that_gives_up_is_recorded_and_counted(allowed_api: Api, hooks: Hooks) -> None:
    """A receiver that answers 503 to every try: the schedule's 3 tries (the tests' short
    CALLBACK_RETRY_SCHEDULE) are all on record, the last one `gave_up`, and the final failure
    is counted in aimarket_callback_failures_total: never silent."""

    def failures() -> float:
        text = httpx.get(allowed_api.url + "/metrics", timeout=30).text
        found = re.search(
            r'^aimarket_callback_failures_total\{event="completed",reason="exhausted"\} (\S+)$',
            text,
            re.MULTILINE,
        )
        return float(found.group(1)) if found else 0.0

    before = failures()
    hooks.answers["/down"] = [503, 503, 503]
    task_id = submit(allowed_api, hooks.url + "/down").json()["task_id"]
    hooks.wait("/down", 3)
    tries = attempts(allowed_api, task_id, 3)
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in tries] == [
        (1, 503, "retrying"),
        (2, 503, "retrying"),
        (3, 503, "gave_up"),
    ]
    assert [a["next_attempt_at"] is None for a in tries] == [False, False, True]
    deadline = time.monotonic() + 10
    while failures() < before + 1:
        assert time.monotonic() < deadline, "the final failure was not counted"
        time.sleep(0.2)
    time.sleep(1.5)  # no fourth try
    assert len([c for c in hooks.calls if c["path"] == "/down"]) == 3


def test_an_embedded_restart_between_tries_loses_no_try(
    tmp_path: Path,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
    hooks: Hooks,
) -> None:
    """The in-process queue held the wait for the next try, and the process died: the next
    start queues that try again, at its time."""
    env = embedded_env(tmp_path / "data", tiny_models, extra_workflows, receiver)
    env.update(CALLBACK_ALLOWLIST="127.0.0.1", CALLBACK_RETRY_SCHEDULE="0,4s")
    api = serve(env, tmp_path)
    hooks.answers["/restart"] = [503]
    task_id = submit(api, hooks.url + "/restart").json()["task_id"]
    (first,) = attempts(api, task_id, 1)
    assert first["outcome"] == "retrying"
    api.proc.proc.kill()
    api.proc.proc.wait(10)
    again = serve(env, tmp_path)
    try:
        calls = hooks.wait("/restart", 2)
        assert [c["answered"] for c in calls] == [503, 200]
        listed = attempts(again, task_id, 2)
        assert [(a["attempt"], a["outcome"]) for a in listed] == [(1, "retrying"), (2, "delivered")]
        # At its time, not at once: 4 s after the first try.
        gap = datetime.fromisoformat(listed[1]["created_at"]) - datetime.fromisoformat(
            listed[0]["created_at"]
        )
        assert gap.total_seconds() >= 3.9
        assert "queued again the next callback try of 1 task(s)" in again.proc.output()
    finally:
        stop(again.proc)


def test_the_schedule_is_svixs_by_default_and_checked_at_start() -> None:
    schedule = load_settings({}, env_file=None).callback_schedule_s
    assert schedule == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    short = load_settings({"CALLBACK_RETRY_SCHEDULE": "0, 500ms, 2s,1m"}, env_file=None)
    assert short.callback_schedule_s == (0, 0.5, 2, 60)
    for bad in ("5s,1m", "0,soon", "0,,1s"):
        with pytest.raises(SettingsError, match="CALLBACK_RETRY_SCHEDULE is invalid"):
            load_settings({"CALLBACK_RETRY_SCHEDULE": bad}, env_file=None)


def test_redirect_is_not_followed(allowed_api: Api, hooks: Hooks) -> None:
    hooks.answers["/moved"] = [302]
    task_id = submit(allowed_api, hooks.url + "/moved").json()["task_id"]
    hooks.wait("/moved", 1)
    (attempt,) = attempts(allowed_api, task_id, 1)
    assert attempt["status_code"] == 302
    time.sleep(1.5)  # a retry or a followed redirect would have come by now
    assert [c for c in hooks.calls if c["path"] in ("/followed",)] == []
    assert len([c for c in hooks.calls if c["path"] == "/moved"]) == 1
    assert len(attempts(allowed_api, task_id, 2, timeout=0)) == 1


def test_unknown_task_has_no_callbacks(allowed_api: Api) -> None:
    with client(allowed_api) as c:
        assert c.get(f"/v1/tasks/{uuid.uuid4()}/callbacks").status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
    ],
)
def test_internal_callback_urls_are_refused_at_submission(strict_api: Api, url: str) -> None:
    response = submit(strict_api, url)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_callback_url"
    assert body["field"] == "callback_url"
    assert "CALLBACK_ALLOWLIST" in body["message"]


def test_allowlisted_loopback_is_accepted(allowed_api: Api, hooks: Hooks) -> None:
    assert submit(allowed_api, hooks.url + "/accepted").status_code == 202
    # Not allow-listed there: other private ranges stay refused.
    assert submit(allowed_api, "http://10.0.0.5/hook").status_code == 422


def test_refused_at_delivery_is_recorded_and_not_retried(strict_api: Api) -> None:
    # MARKETPLACE_CALLBACK (the tests' loopback receiver) is checked when delivering.
    task_id = submit(strict_api, None).json()["task_id"]
    (attempt,) = attempts(strict_api, task_id, 1)
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("refused: ")
    assert "loopback" in attempt["error"]
    time.sleep(1.5)
    assert len(attempts(strict_api, task_id, 2, timeout=0)) == 1
    log = strict_api.proc.output()
    assert f"callback for task {task_id} not sent" in log
    assert SECRET not in log
