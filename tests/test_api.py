"""The HTTP contract: auth, validation errors, 404s, docs and health, against the real
`aimarket serve` process and its real backends. Bad requests must leave nothing behind."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import TOKEN
from tests.support import queued_messages, rows_for
from workflows.limits import MIN_DURATION_S, MIN_TEMPERATURE


def post(client: httpx.Client, body: Any) -> httpx.Response:
    return client.post("/v1/tasks", json=body)


GOOD = {"workflow": "text2music", "input": {"prompt": "calm piano", "duration": 5}}


@pytest.mark.parametrize(
    ("change", "status", "code", "field"),
    [
        ({"workflow": "text2video"}, 422, "unknown_workflow", "workflow"),
        ({"input": {"prompt": "", "duration": 5}}, 422, "invalid_input", "input.prompt"),
        ({"input": {"prompt": "x" * 101, "duration": 5}}, 422, "invalid_input", "input.prompt"),
        ({"input": {"duration": 5}}, 422, "invalid_input", "input.prompt"),
        ({"input": {"prompt": "a", "duration": 0}}, 422, "invalid_input", "input.duration"),
        ({"input": {"prompt": "a", "duration": 30.5}}, 422, "invalid_input", "input.duration"),
        ({"input": {"prompt": "a", "duration": "5"}}, 422, "invalid_input", "input.duration"),
        ({"input": {"prompt": "a", "speed": 2}}, 422, "invalid_input", "input.speed"),
        ({"callback_url": "ftp://example.com/x"}, 422, "invalid_callback_url", "callback_url"),
        ({"user_id": ""}, 400, "invalid_request", "user_id"),
        ({"user_id": 42}, 400, "invalid_request", "user_id"),
        ({"extra": True}, 400, "invalid_request", "extra"),
    ],
)
def test_bad_request_is_refused_and_leaves_nothing(
    client: httpx.Client,
    database_url: str,
    rabbitmq_vhost: str,
    change: dict[str, Any],
    status: int,
    code: str,
    field: str,
) -> None:
    user = f"bad-{uuid.uuid4().hex[:6]}"
    body = {**GOOD, "user_id": user, **change}
    response = post(client, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"]
    assert rows_for(database_url, user) == 0
    assert queued_messages(rabbitmq_vhost) == 0


#: Every built-in workflow with a duration, and its other required fields.
NEEDS: dict[str, dict[str, Any]] = {
    "text2music": {"prompt": "piano"},
    "text2sound": {"prompt": "rain"},
    "soundtrack": {"music_prompt": "piano", "sfx_prompt": "rain"},
    "variations": {"prompt": "piano"},
    "continuation": {"prompt": "more", "audio_prompt": "upload:abc"},
    "melody": {"prompt": "piano", "melody": "upload:abc"},
}
SAMPLING = ("text2music", "text2sound", "continuation", "melody")
AT_LEAST_ONE_FRAME = f"must be at least {MIN_DURATION_S:g}"  # 0.02
AT_LEAST_MIN_TEMPERATURE = f"must be at least {MIN_TEMPERATURE:g}"  # 0.01


@pytest.mark.parametrize(
    ("workflow", "change", "field", "message"),
    [
        # Issue 10's reproducers: each was accepted, then failed three attempts in audiocraft.
        ("text2music", {"duration": 1e-9}, "input.duration", AT_LEAST_ONE_FRAME),
        ("text2music", {"duration": 0.005}, "input.duration", AT_LEAST_ONE_FRAME),
        ("text2music", {"temperature": 1e-300}, "input.temperature", AT_LEAST_MIN_TEMPERATURE),
        *[(w, {"duration": 0.0199}, "input.duration", AT_LEAST_ONE_FRAME) for w in NEEDS],
        *[
            (w, {"temperature": 0.0099}, "input.temperature", AT_LEAST_MIN_TEMPERATURE)
            for w in SAMPLING
        ],
    ],
)
def test_inputs_below_the_generation_floors_are_refused_and_leave_nothing(
    client: httpx.Client,
    database_url: str,
    rabbitmq_vhost: str,
    workflow: str,
    change: dict[str, Any],
    field: str,
    message: str,
) -> None:
    user = f"floor-{uuid.uuid4().hex[:6]}"
    body = {"workflow": workflow, "user_id": user, "input": {**NEEDS[workflow], **change}}
    response = post(client, body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert (error["code"], error["field"], error["message"]) == ("invalid_input", field, message)
    assert rows_for(database_url, user) == 0
    assert queued_messages(rabbitmq_vhost) == 0


def test_malformed_json_is_a_400(client: httpx.Client, rabbitmq_vhost: str) -> None:
    response = client.post(
        "/v1/tasks",
        content=b'{"workflow": "text2music",',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"
    assert queued_messages(rabbitmq_vhost) == 0


def test_missing_field_names_it(client: httpx.Client) -> None:
    response = post(client, {"workflow": "text2music", "input": {"prompt": "x"}})
    assert response.status_code == 400
    assert response.json()["field"] == "user_id"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": "Bearer"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/workflows"),
        ("GET", "/v1/stats?user_id=a"),
        ("POST", "/v1/tasks"),
        ("GET", f"/v1/tasks/{uuid.uuid4()}"),
    ],
)
def test_every_v1_route_needs_the_token(
    api_url: str, headers: dict[str, str], method: str, path: str
) -> None:
    response = httpx.request(method, api_url + path, headers=headers, json=GOOD)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_health_and_docs_need_no_token(api_url: str) -> None:
    assert httpx.get(api_url + "/health/live").json() == {"status": "ok"}
    ready = httpx.get(api_url + "/health/ready").json()
    assert ready["checks"] == {"database": "ok", "redis": "ok", "rabbitmq": "ok", "s3": "ok"}
    schema = httpx.get(api_url + "/schema/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    assert "/v1/tasks" in schema["paths"]
    assert httpx.get(api_url + "/schema/swagger").status_code == 200


def test_unknown_task_is_404(client: httpx.Client) -> None:
    for task_id in (str(uuid.uuid4()), "not-a-uuid"):
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


def test_workflows_lists_schemas_with_settings_limits(client: httpx.Client) -> None:
    workflows = {w["name"]: w for w in client.get("/v1/workflows").json()["workflows"]}
    assert {"text2music", "text2sound"} <= set(workflows)
    schema = workflows["text2music"]["input_schema"]
    assert schema["properties"]["prompt"]["maxLength"] == 100
    assert schema["properties"]["duration"]["maximum"] == 30
    assert "prompt" in schema["required"]
    queues = {s["id"]: s["queue"] for s in workflows["text2music"]["stages"]}
    assert queues["generate"] == "musicgen"
    assert {s["id"]: s["queue"] for s in workflows["text2sound"]["stages"]}[
        "generate"
    ] == "audiogen"


def test_stats_needs_user_id_and_a_sane_range(client: httpx.Client) -> None:
    assert client.get("/v1/stats").status_code == 400
    response = client.get(
        "/v1/stats",
        params={"user_id": "u", "from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_range"


def test_openapi_publishes_each_workflow_input_schema(api_url: str) -> None:
    schema = httpx.get(api_url + "/schema/openapi.json").json()
    components = schema["components"]["schemas"]
    music = components["Text2musicInput"]
    assert music["properties"]["duration"]["maximum"] == 30
    assert music["additionalProperties"] is False
    assert "Variations" + "Input" in components
    body = components["CreateTask"]["properties"]["input"]
    assert {"$ref": "#/components/schemas/SoundtrackInput"} in body["anyOf"]
    assert body["x-workflow-inputs"]["text2sound"] == "#/components/schemas/Text2soundInput"
