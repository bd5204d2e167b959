"""Input that used to reach the database or the framework's decoding and answer 500: each is
now a 4xx ``{code, message, field}`` and leaves nothing behind (api/screening.py), on the
real stack (Postgres cannot store NUL) and embedded (SQLite can, and must refuse it too)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from api.screening import MAX_DEPTH
from tests.conftest import TOKEN, Api
from tests.support import queued_messages, rows_for

AUTH = {"authorization": f"Bearer {TOKEN}"}
GOOD_INPUT = {"prompt": "rain", "duration": 1}


def body(user: str, **change: Any) -> dict[str, Any]:
    return {"workflow": "text2sound", "user_id": user, "input": GOOD_INPUT, **change}


def assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code
    assert error.get("field") == field
    assert error["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input": {"prompt": "rain\u0000drop", "duration": 1}}, "input.prompt"),
        ({"input": {"prompt": "bell\u0007", "duration": 1}}, "input.prompt"),
        ({"callback_url": "https://example.com/\u0000"}, "callback_url"),
        ({"input": {"prompt\u0000": "x"}}, "input.prompt?"),
    ],
)
def test_control_characters_in_a_body_are_refused(
    client: httpx.Client,
    database_url: str,
    rabbitmq_vhost: str,
    change: dict[str, Any],
    field: str,
) -> None:
    user = f"nul-{uuid.uuid4().hex[:6]}"
    response = client.post("/v1/tasks", json=body(user, **change))
    assert_error(response, 422, "invalid_text", field)
    assert "U+00" in response.json()["message"]
    assert rows_for(database_url, user) == 0
    assert queued_messages(rabbitmq_vhost) == 0


def test_a_user_id_with_nul_is_refused(client: httpx.Client, database_url: str) -> None:
    response = client.post("/v1/tasks", json=body("bad\u0000user"))
    assert_error(response, 422, "invalid_text", "user_id")
    assert rows_for(database_url, "bad\u0000user".replace("\u0000", "")) == 0


def test_tab_and_newlines_stay_allowed(client: httpx.Client, database_url: str) -> None:
    user = f"tab-{uuid.uuid4().hex[:6]}"
    prompt = "rain\ton a roof\r\nthen thunder"
    response = client.post("/v1/tasks", json=body(user, input={"prompt": prompt, "duration": 1}))
    assert response.status_code == 202, response.text
    assert response.json()["input"]["prompt"] == prompt
    assert rows_for(database_url, user) == 1


@pytest.mark.parametrize("path", ["/v1/tasks?user_id=a%00b", "/v1/stats?user_id=a%00b"])
def test_control_characters_in_a_query_are_refused(client: httpx.Client, path: str) -> None:
    assert_error(client.get(path), 422, "invalid_text", "user_id")


def test_control_characters_in_a_header_are_refused(
    client: httpx.Client, database_url: str
) -> None:
    user = f"hdr-{uuid.uuid4().hex[:6]}"
    # httpx refuses to send NUL in a header; other controls pass the HTTP layer.
    response = client.post(
        "/v1/tasks", json=body(user), headers={"Idempotency-Key": "key\u0001one"}
    )
    assert_error(response, 422, "invalid_text", "Idempotency-Key")
    assert rows_for(database_url, user) == 0


def test_invalid_utf8_is_malformed_json(client: httpx.Client, database_url: str) -> None:
    user = f"utf-{uuid.uuid4().hex[:6]}"
    raw = (
        b'{"workflow": "text2sound", "user_id": "' + user.encode() + b'", '
        b'"input": {"prompt": "rain\xff\xfedrop"}}'
    )
    response = client.post("/v1/tasks", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "malformed_json", None)
    assert rows_for(database_url, user) == 0


def test_a_lone_surrogate_is_malformed_json(client: httpx.Client) -> None:
    raw = b'{"workflow": "text2sound", "user_id": "u", "input": {"prompt": "\\ud800"}}'
    response = client.post("/v1/tasks", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "malformed_json", None)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused_before_decoding(
    client: httpx.Client, database_url: str, depth: int
) -> None:
    user = f"deep-{uuid.uuid4().hex[:6]}"
    prefix = b'{"workflow":"text2sound","user_id":"' + user.encode() + b'","input":{"prompt":'
    raw = prefix + b"[" * depth + b"]" * depth + b"}}"
    assert len(raw) < 1_000_000  # under the body limit: refused for its depth, not its size
    response = client.post("/v1/tasks", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "body_too_deep", None)
    assert rows_for(database_url, user) == 0


def test_nesting_at_the_bound_reaches_the_schema(client: httpx.Client) -> None:
    # Two levels are the body and `input`; the rest are the prompt's arrays.
    depth = MAX_DEPTH - 2
    raw = (
        b'{"workflow":"text2sound","user_id":"u","input":{"prompt":'
        + b"[" * depth
        + b"]" * depth
        + b"}}"
    )
    response = client.post("/v1/tasks", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_input", "input.prompt")


def test_the_embedded_database_refuses_the_same(embedded_api: Api) -> None:
    # SQLite would store NUL: the rule is the API's, not the database's.
    user = f"emb-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=embedded_api.url, headers=AUTH, timeout=30) as client:
        response = client.post("/v1/tasks", json=body(user, input={"prompt": "a\u0000b"}))
        assert_error(response, 422, "invalid_text", "input.prompt")
        assert_error(client.get("/v1/stats?user_id=a%00b"), 422, "invalid_text", "user_id")
        assert client.get(f"/v1/tasks?user_id={user}").json()["tasks"] == []
