"""The API against its own OpenAPI document: schemathesis generates requests for every
operation (valid ones and ones that break the schema) and checks each answer; a table of
hand-written requests shows that every documented status code can really be produced.

The fuzzed app runs in-process on the real Postgres (which, unlike SQLite, cannot store some
text: a NUL in a prompt was a 500 there) with the in-process queue and its worker threads
running on the tiny models, so the tasks it creates really execute while other requests read,
list and cancel them. Every callback and audio URL request the workers make goes to a dead
loopback proxy: nothing leaves this machine. The table of statuses uses the plain embedded app
(SQLite, workers not started: its tasks stay queued, which some rows rely on).
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dramatiq.broker
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core import NOT_SET
from schemathesis.core.transport import Response
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

import actors.resources
import aimarket.broker
import api.uploads as api_uploads
from api.services import Services
from core.local_media import sign
from core.settings import load_settings
from tasks.sweep import SweepReport
from tests.conftest import TOKEN, free_port, serve, stop

AUTH = {"authorization": f"Bearer {TOKEN}"}
ADMIN_TOKEN = "admin-" + TOKEN
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}

#: Examples per operation and generation mode (valid, invalid) in the fuzzing phase; the
#: examples and coverage phases add their own, bounded by the document.
MAX_EXAMPLES = 100


#: 403: a generated X-User-Scope that is not the request's user_id (api/scope.py).
ACCEPTED = ["2xx", "401", "403", "404", "409", "422"]
CONFIG = SchemathesisConfig.from_dict(
    {
        # Every request carries the token, but the one the ignored_auth check sends without it.
        "auth": {"openapi": {"bearer": {"bearer": TOKEN}, "admin": {"bearer": ADMIN_TOKEN}}},
        "checks": {
            # A request the schema allows may still be refused for what the schema cannot say
            # (a callback URL on a private network, an upload that does not exist, the input
            # of another workflow): 422, never 400.
            "positive_data_acceptance": {"expected-statuses": ACCEPTED},
            # Litestar 2's automatic OPTIONS answers an Allow naming only one handler's methods
            # when a path has two (GET and POST /v1/tasks): litestar-org/litestar#4169, fixed
            # in Litestar 3 only. The Allow of a 405 is checked by unsupported_method.
            "allow_header_conformance": {"enabled": False},
        },
        "operations": [
            # 'from' after 'to' is a 400 (invalid_range), and user_id is required unless
            # X-User-Scope names the user: neither can the schema express.
            {
                "include-path-regex": "^/v1/(stats|tasks)$",
                "include-method": "GET",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}},
            },
            # Query strings are read leniently, not refused: of a repeated parameter the last
            # counts, and a number is a Unix time where a date-time is expected.
            {
                "include-path-regex": "^/v1/(stats|tasks)$",
                "include-method": "GET",
                "checks": {"negative_data_rejection": {"enabled": False}},
            },
        ],
    }
)


def _schema(
    env: dict[str, str], workers: bool, patch: pytest.MonkeyPatch
) -> Iterator[OpenApiSchema]:
    """The document of a fresh app, whose lifespan runs until the test ends (schemathesis ends
    it after each test, and the app's cannot start twice)."""
    from aimarket import app as app_module

    env = {
        "MARKETPLACE_TOKEN": TOKEN,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "WEBHOOK_SECRET": "whsec_" + "a" * 43 + "=",
        "LOG_LEVEL": "WARNING",
        # Many submissions by few users, fast: no limit may turn them into 429s.
        "RATE_LIMIT_PER_MINUTE": "0",
        "MAX_ACTIVE_TASKS_PER_USER": "0",
        "MAX_QUEUE_DEPTH": "0",
        **env,
    }
    # The app sets process-wide globals (the broker, the workers' settings): put them back
    # for the tests that run after this one.
    patch.setattr(aimarket.broker, "_broker", None)
    patch.setattr(dramatiq.broker, "global_broker", dramatiq.broker.global_broker)
    patch.setattr(actors.resources, "_resources", actors.resources._resources)
    if not workers:
        patch.setattr(app_module, "start_worker", lambda services: None)
    app = app_module.create_app(load_settings(env, env_file=None))
    # Loading the document starts the app's lifespan, which lives until shutdown_lifespans.
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app, config=CONFIG)
    try:
        yield schema
    finally:
        shutdown_lifespans()


@pytest.fixture
def api_schema(tmp_path: Path) -> Iterator[OpenApiSchema]:
    """The embedded app, workers not started (the table of statuses)."""
    with pytest.MonkeyPatch.context() as patch:
        yield from _schema({"DATA_DIR": str(tmp_path / "data")}, False, patch)


@pytest.fixture
def fuzz_schema(
    tmp_path: Path, database_url: str, tiny_models: dict[str, Path]
) -> Iterator[OpenApiSchema]:
    """The app on the real Postgres, its worker threads running tasks on the tiny models."""
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "MUSIC_GEN_MODEL": str(tiny_models["musicgen"]),
        "AUDIO_GEN_MODEL": str(tiny_models["audiogen"]),
        "DEVICE": "cpu",
        "EMBEDDED_WORKER_THREADS": "2",
        "CALLBACK_RETRY_SCHEDULE": "0",
    }
    with pytest.MonkeyPatch.context() as patch:
        # Callbacks and audio URLs the workers would fetch go to a dead loopback proxy.
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            patch.setenv(name, f"http://127.0.0.1:{free_port()}")
        patch.delenv("NO_PROXY", raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield from _schema(env, True, patch)


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis (4.32) names each operation's subtest by rewriting the private
    # `Node._nodeid`, which pytest 9.2 no longer has: give it one to rewrite.
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # The same examples each run: the suite stays deterministic (explore with another seed by
    # hand: derandomize=False and pytest --hypothesis-seed=N).
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_operation_fails_on_generated_input(case: schemathesis.Case) -> None:
    case.call_and_validate()


# --- Every documented status code is real ---------------------------------------------------

GOOD = {"workflow": "text2sound", "user_id": "fuzz", "input": {"prompt": "rain", "duration": 1}}
NO_TASK = "00000000-0000-4000-8000-000000000000"


def wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(b"\0\0" * int(seconds * rate))
    return out.getvalue()


class Api:
    """Hand-written requests to the fuzzed app, each answer checked against the document."""

    def __init__(self, schema: OpenApiSchema, patch: pytest.MonkeyPatch) -> None:
        self.schema, self.patch = schema, patch
        self.services: Services = schema.app.state.services

    def call(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        path_parameters: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        body: Any = NOT_SET,
        media_type: str | None = None,
    ) -> Response:
        token = ADMIN_AUTH if path.startswith("/v1/admin/") else AUTH
        case = self.schema[path][method].Case(
            path_parameters=path_parameters,
            query=query,
            headers={**(token if auth else {}), **(headers or {})},
            body=body,
            media_type=media_type,
        )
        response = case.call()
        case.validate_response(
            response,
            checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
        )
        return response

    def task(self, **change: Any) -> str:
        response = self.call("POST", "/v1/tasks", body={**GOOD, **change})
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    def ended_task(self) -> str:
        task_id = self.task()
        self.call("POST", "/v1/tasks/{task_id}/cancel", path_parameters={"task_id": task_id})
        return task_id

    def media_link(self) -> tuple[str, dict[str, Any]]:
        self.services.store.put("fuzz/a.wav", wav(), "audio/wav")
        url = urlsplit(self.services.store.presign("fuzz/a.wav"))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        return url.path.removeprefix("/media/"), query


def _tasks_post_replay(api: Api) -> Response:
    headers = {"Idempotency-Key": "fuzz-replay"}
    api.call("POST", "/v1/tasks", headers=headers, body=GOOD)
    return api.call("POST", "/v1/tasks", headers=headers, body=GOOD)


def _tasks_post_conflict(api: Api) -> Response:
    headers = {"Idempotency-Key": "fuzz-conflict"}
    api.call("POST", "/v1/tasks", headers=headers, body=GOOD)
    other = {**GOOD, "input": {"prompt": "snow", "duration": 1}}
    return api.call("POST", "/v1/tasks", headers=headers, body=other)


def _tasks_post_rate_limited(api: Api) -> Response:
    api.patch.setattr(api.services.limits, "rate_per_minute", 1)
    api.patch.setattr(api.services.limits, "burst", 1)
    body = {**GOOD, "user_id": "fuzz-limited"}
    api.call("POST", "/v1/tasks", body=body)
    return api.call("POST", "/v1/tasks", body=body)


def _tasks_post_queue_down(api: Api) -> Response:
    def down(*_: Any, **__: Any) -> None:
        raise ConnectionError("the broker is down")

    api.patch.setattr(api.services.broker, "enqueue", down)
    return api.call("POST", "/v1/tasks", body=GOOD)


def _media_down(api: Api) -> Response:
    def down() -> None:
        raise OSError("the media store is unreachable")

    api.patch.setattr(api.services.store, "ping", down)
    return api.call("GET", "/health/ready", auth=False)


def _upload_too_large(api: Api) -> Response:
    api.patch.setattr(api_uploads, "MAX_UPLOAD_BYTES", 100)
    return api.call("POST", "/v1/uploads", body=wav(), media_type="application/octet-stream")


def _media(api: Api, status: int) -> Response:
    key, query = api.media_link()
    if status == 400:
        query.pop("sig")
    elif status == 401:
        query["sig"] = "0" * 64
    elif status == 404:
        key = "fuzz/none.wav"
        query["sig"] = sign(api.services.store.key, key, int(query["expires"]))  # type: ignore[union-attr]
    return api.call("GET", "/media/{key}", auth=False, path_parameters={"key": key}, query=query)


def _dead_letter(api: Api, actor: str, task_id: str, queue: str) -> str:
    """Puts a dead letter where the in-process broker keeps them; its message id."""
    message = dramatiq.Message(
        queue_name=queue,
        actor_name=actor,
        args=(task_id, "text2sound", "callback" if actor == "task.callback" else "validate"),
        kwargs={},
        options={},
    )
    broker = api.services.broker
    broker.dead_letters_by_queue[queue].append(message)  # type: ignore[attr-defined]
    return message.message_id


def _admin(method: str, path: str, status: int) -> Callable[[Api], Response]:
    """The admin routes: 200 on a dead letter of a callback, 409 on one of a stage whose task
    was cancelled, 404 on none, 401 without the admin token, 403 while it is unset."""

    def call(api: Api) -> Response:
        params: dict[str, Any] | None = None
        if "{message_id}" in path:
            if status == 409:
                letter = _dead_letter(api, "task.validate", api.ended_task(), "default")
            elif status == 404:
                letter = "no-such-message"
            else:
                letter = _dead_letter(api, "task.callback", api.task(), "callbacks")
            params = {"message_id": letter}
        if status == 403:
            api.patch.setattr(api.services.settings, "admin_token", None)
        if status == 409 and path.endswith("/sweep"):
            sweeper = api.schema.app.state.sweeper

            async def held(**_: Any) -> SweepReport:
                return SweepReport(ran=False)

            api.patch.setattr(sweeper, "run_once", held)
        query = {"limit": 0} if status == 400 else None
        return api.call(method, path, auth=status != 401, path_parameters=params, query=query)

    return call


def _by_id(method: str, path: str, status: int) -> Callable[[Api], Response]:
    def call(api: Api) -> Response:
        task_id = {200: api.task, 202: api.task, 409: api.ended_task}.get(status, lambda: NO_TASK)()
        return api.call(method, path, path_parameters={"task_id": task_id}, auth=status != 401)

    return call


def _invalid_text(method: str, path: str) -> Callable[[Api], Response]:
    """The 422 of a control character (api/screening.py), in the operation's first query or
    header parameter."""

    def call(api: Api) -> Response:
        operation = api.schema.raw_schema["paths"][path][method.lower()]
        where, name = next(
            (p["in"], p["name"])
            for p in operation.get("parameters", [])
            if p["in"] in ("query", "header")
        )
        params = {"task_id": NO_TASK} if "{task_id}" in path else None
        if "{message_id}" in path:
            params = {"message_id": "no-such-message"}
        if "{key}" in path:
            params = {"key": "fuzz/a.wav"}
        bad = {name: "bad\x01text"}
        return api.call(
            method,
            path,
            path_parameters=params,
            query=bad if where == "query" else None,
            headers=bad if where == "header" else None,
            auth=path != "/media/{key}",
        )

    return call


#: One request per (operation, documented status) that gets exactly that status.
PRODUCERS: dict[tuple[str, str, int], Callable[[Api], Response]] = {
    ("POST", "/v1/tasks", 202): lambda api: api.call("POST", "/v1/tasks", body=GOOD),
    ("POST", "/v1/tasks", 200): _tasks_post_replay,
    ("POST", "/v1/tasks", 400): lambda api: api.call(
        "POST", "/v1/tasks", body={**GOOD, "user_id": ""}
    ),
    ("POST", "/v1/tasks", 401): lambda api: api.call("POST", "/v1/tasks", auth=False, body=GOOD),
    ("POST", "/v1/tasks", 403): lambda api: api.call(
        "POST", "/v1/tasks", body=GOOD, headers={"x-user-scope": "someone-else"}
    ),
    ("POST", "/v1/tasks", 409): _tasks_post_conflict,
    ("POST", "/v1/tasks", 413): lambda api: api.call(
        "POST", "/v1/tasks", body={**GOOD, "input": {"prompt": "x" * 1_100_000}}
    ),
    ("POST", "/v1/tasks", 422): lambda api: api.call(
        "POST", "/v1/tasks", body={**GOOD, "input": {"prompt": "rain", "duration": 0}}
    ),
    ("POST", "/v1/tasks", 429): _tasks_post_rate_limited,
    ("POST", "/v1/tasks", 503): _tasks_post_queue_down,
    ("GET", "/v1/tasks", 200): lambda api: api.call("GET", "/v1/tasks", query={"user_id": "fuzz"}),
    ("GET", "/v1/tasks", 400): lambda api: api.call("GET", "/v1/tasks", query={"user_id": ""}),
    ("GET", "/v1/tasks", 403): lambda api: api.call(
        "GET", "/v1/tasks", query={"user_id": "fuzz"}, headers={"x-user-scope": "other"}
    ),
    ("GET", "/v1/tasks", 401): lambda api: api.call(
        "GET", "/v1/tasks", auth=False, query={"user_id": "fuzz"}
    ),
    **{
        (method, path, status): _by_id(method, path, status)
        for method, path, statuses in [
            ("GET", "/v1/tasks/{task_id}", (200, 401, 404)),
            ("GET", "/v1/tasks/{task_id}/callbacks", (200, 401, 404)),
            ("GET", "/v1/tasks/{task_id}/events", (401, 404)),
            ("POST", "/v1/tasks/{task_id}/cancel", (202, 401, 404, 409)),
        ]
        for status in statuses
    },
    # A stream of an ended task: its one `done` event, then the end.
    ("GET", "/v1/tasks/{task_id}/events", 200): lambda api: api.call(
        "GET", "/v1/tasks/{task_id}/events", path_parameters={"task_id": api.ended_task()}
    ),
    ("GET", "/v1/stats", 200): lambda api: api.call("GET", "/v1/stats", query={"user_id": "fuzz"}),
    ("GET", "/v1/stats", 400): lambda api: api.call(
        "GET",
        "/v1/stats",
        query={"user_id": "fuzz", "from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    ),
    ("GET", "/v1/stats", 403): lambda api: api.call(
        "GET", "/v1/stats", query={"user_id": "fuzz"}, headers={"x-user-scope": "other"}
    ),
    ("GET", "/v1/stats", 401): lambda api: api.call(
        "GET", "/v1/stats", auth=False, query={"user_id": "fuzz"}
    ),
    ("GET", "/v1/workflows", 200): lambda api: api.call("GET", "/v1/workflows"),
    ("GET", "/v1/workflows", 401): lambda api: api.call("GET", "/v1/workflows", auth=False),
    ("POST", "/v1/uploads", 201): lambda api: api.call(
        "POST", "/v1/uploads", body=wav(), media_type="application/octet-stream"
    ),
    ("POST", "/v1/uploads", 401): lambda api: api.call(
        "POST", "/v1/uploads", auth=False, body=wav(), media_type="application/octet-stream"
    ),
    ("POST", "/v1/uploads", 413): _upload_too_large,
    ("POST", "/v1/uploads", 422): lambda api: api.call(
        "POST", "/v1/uploads", body=b"not audio", media_type="application/octet-stream"
    ),
    ("GET", "/health/live", 200): lambda api: api.call("GET", "/health/live", auth=False),
    ("GET", "/health/ready", 200): lambda api: api.call("GET", "/health/ready", auth=False),
    ("GET", "/health/ready", 503): _media_down,
    ("GET", "/metrics", 200): lambda api: api.call("GET", "/metrics", auth=False),
    **{("GET", "/media/{key}", s): partial(_media, status=s) for s in (200, 400, 401, 404)},
    **{
        (method, path, status): _admin(method, path, status)
        for method, path, statuses in [
            ("GET", "/v1/admin/dead-letters", (200, 400, 401, 403)),
            ("POST", "/v1/admin/dead-letters/{message_id}/retry", (200, 401, 403, 404, 409)),
            ("POST", "/v1/admin/dead-letters/{message_id}/discard", (200, 401, 403, 404)),
            ("POST", "/v1/admin/sweep", (200, 401, 403, 409)),
        ]
        for status in statuses
    },
}


def documented(schema: OpenApiSchema) -> set[tuple[str, str, int]]:
    return {
        (method.upper(), path, int(status))
        for path, item in schema.raw_schema["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict)
        for status in operation.get("responses", {})
    }


def test_every_documented_status_is_produced(api_schema: OpenApiSchema) -> None:
    codes = documented(api_schema)
    # The 422 of text with a control character, wherever a route reads a query or a header
    # and documents no other 422 (whose request above shows it).
    producers = dict(PRODUCERS)
    for method, path, status in codes - PRODUCERS.keys():
        if status == 422:
            producers[method, path, status] = _invalid_text(method, path)
    unshown = sorted(codes - producers.keys())
    assert not unshown, f"documented, but no request in PRODUCERS gets it: {unshown}"
    undocumented = sorted(producers.keys() - codes)
    assert not undocumented, f"answered by the API, but not in the document: {undocumented}"
    for (method, path, status), produce in sorted(producers.items()):
        with pytest.MonkeyPatch.context() as patch:
            response = produce(Api(api_schema, patch))
        assert response.status_code == status, (method, path, response.text)


# --- Hostile values in every place that takes text, on the real stack ---------------------

#: Text no request may smuggle to the database, as query bytes: NUL, other C0 controls, invalid
#: UTF-8, an overlong NUL, a UTF-8-encoded surrogate.
HOSTILE_QUERY = [b"a%00b", b"%07", b"%1b%5b31m", b"%ff%fe", b"%c0%80", b"%ed%a0%80"]
#: The same as JSON strings, and as header values (which httpx sends only in ASCII, without
#: NUL, CR and LF).
HOSTILE_TEXT = ["a\x00b", "\x00", "bell\x07", "\x1b[31m"]
HOSTILE_HEADERS = ["bell\x07", "\x1b[31m", "del\x7f"]
#: Bodies that used to escape the JSON decoding as 500s, and numbers at the edges.
HOSTILE_BODIES = [
    b'{"workflow": "text2sound", "user_id": "fz", "input": {"prompt": "rain\xff\xfedrop"}}',
    b'{"workflow": "text2sound", "user_id": "fz", "input": {"prompt": "\\ud800"}}',
    b'{"workflow": "text2sound", "user_id": "fz", "input": {"prompt": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}}",
    b'{"workflow": "text2sound", "user_id": "fz", "input": {"prompt": "x", "duration": 1e400}}',
    b'{"workflow": "text2sound", "user_id": "fz", "input": {"prompt": "x", "seed": '
    + b"9" * 40
    + b"}}",
    b'{"workflow": "text2sound", "user_id": "fz", "input": {"prompt": "x", "duration": -0.0}}',
    b'{"workflow": "text2sound", "user_id": "fz", "input": {"prompt": "x", "temperature": 1e-300}}',
    b'{"workflow": "text2sound", "user_id": "fz", "input": {"prompt": "x", "duration": 1e-9}}',
]


@pytest.fixture(scope="module")
def stack_with_admin(
    service_env: dict[str, str], worker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An API on the real Postgres, Redis, RabbitMQ and S3, the admin API open, the session's
    worker running what it accepts."""
    api = serve({**service_env, "ADMIN_TOKEN": ADMIN_TOKEN}, tmp_path_factory.mktemp("hostile"))
    yield api.url
    stop(api.proc)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The paths of every string in a JSON value."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    return {**value, path[0]: _replaced(value[path[0]], path[1:], new)}


def _hostile_requests(
    client: httpx.Client, method: str, path: str, operation: dict[str, Any], auth: dict[str, str]
) -> Iterator[tuple[httpx.Response, str]]:
    """Each hostile value in each place of one operation that takes text, and the answer."""
    params = operation.get("parameters", [])
    for p in (p for p in params if p["in"] == "query"):
        for raw in HOSTILE_QUERY:
            url = httpx.URL(path, query=p["name"].encode() + b"=" + raw)
            yield client.request(method, url, headers=auth), f"{p['name']}={raw!r}"
    for p in (p for p in params if p["in"] == "header"):
        for text in HOSTILE_HEADERS:
            yield client.request(method, path, headers={**auth, p["name"]: text}), p["name"]
    if "application/json" not in operation.get("requestBody", {}).get("content", {}):
        return
    good = {**GOOD, "user_id": "hostile", "callback_url": "https://example.com/hook"}
    for leaf in _leaves(good):
        for text in HOSTILE_TEXT:
            body = _replaced(good, leaf, text)
            yield client.request(method, path, json=body, headers=auth), f"{leaf}={text!r}"
    for raw in HOSTILE_BODIES:
        headers = {**auth, "content-type": "application/json"}
        yield client.request(method, path, content=raw, headers=headers), repr(raw[:70])


def test_hostile_values_never_give_a_5xx(stack_with_admin: str, database_url: str) -> None:
    """Every query parameter and header of every operation, and every string of a task body,
    gets each hostile value; every answer must be a status the document lists for that
    operation, with an error body, and no task may be stored from it."""
    from tests.support import rows_for

    document = httpx.get(stack_with_admin + "/schema/openapi.json").json()
    answers = 0
    with httpx.Client(base_url=stack_with_admin, timeout=60) as client:
        task = client.post("/v1/tasks", json={**GOOD, "user_id": "fz"}, headers=AUTH).json()
        fill = {"task_id": task["task_id"], "message_id": "none", "key": "fuzz/a.wav"}
        for template, item in document["paths"].items():
            path = template.format(**{k: v for k, v in fill.items() if f"{{{k}}}" in template})
            auth = ADMIN_AUTH if template.startswith("/v1/admin/") else AUTH
            for method, operation in item.items():
                if not isinstance(operation, dict):
                    continue
                documented = set(operation["responses"])
                for response, what in _hostile_requests(client, method, path, operation, auth):
                    where = (method, template, what)
                    assert response.status_code < 500, (*where, response.text)
                    assert str(response.status_code) in documented, (*where, response.text)
                    if response.status_code >= 400:
                        error = response.json()
                        assert error["code"], (*where, error)
                        assert error["message"], (*where, error)
                    answers += 1
    assert answers > 100
    assert rows_for(database_url, "hostile") == 0
