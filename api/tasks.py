"""POST /v1/tasks and GET /v1/tasks/{task_id}."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
import msgspec
from litestar import Controller, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from api.errors import ApiError, error_response
from api.schemas import CreateTask
from api.scope import find_task, scoped_user, user_id_parameter
from api.services import ServicesDep
from core.settings import Settings
from core.ssrf import Unresolvable, UnsafeURL, check_url
from db import callbacks, idempotency, stage_runs
from db.models import CallbackOutcome, Task, TaskStatus
from db.tasks import finish_task, get_task, insert_task, recent_tasks, utcnow
from tasks.view import TaskList, TaskOut, task_view
from workflows.inputs import InputError, validate_input
from workflows.spec import Workflow

log = logging.getLogger(__name__)

#: The header of a submission's idempotency key (see submit).
IDEMPOTENCY_HEADER = "Idempotency-Key"

#: How often an event stream looks for changes, how long it stays quiet before a keep-alive
#: comment (proxies close idle connections), and how long one stream may last.
POLL_S = 0.3
KEEPALIVE_S = 15.0
EVENTS_MAX_S = 3600.0


class CallbackAttemptOut(msgspec.Struct, kw_only=True):
    """One try at delivering a callback."""

    webhook_id: str
    attempt: int
    url: str
    #: None when no answer came (network error, or the URL was refused at delivery).
    status_code: int | None
    error: str | None
    latency_ms: int
    created_at: datetime
    #: ``delivered``; ``refused`` (a 3xx or 4xx answer, or a refused URL: final);
    #: ``retrying`` (another try comes at ``next_attempt_at``); ``gave_up`` (the last try of
    #: CALLBACK_RETRY_SCHEDULE failed). None for tries recorded before this was kept.
    outcome: CallbackOutcome | None = None
    next_attempt_at: datetime | None = None


class CallbackAttemptList(msgspec.Struct, kw_only=True):
    attempts: list[CallbackAttemptOut]


async def _check_callback_url(url: str | None, settings: Settings) -> None:
    """Refuses a callback URL that is not http(s), or whose host is (or resolves to) a
    loopback, link-local, private or reserved address not in CALLBACK_ALLOWLIST (SSRF)."""
    if url is not None:
        allowlist = settings.callback_allowlist
        await _refuse_unsafe(url, allowlist, "invalid_callback_url", "callback_url")


async def _check_audio_urls(
    workflow: Workflow, clean_input: dict[str, Any], settings: Settings
) -> None:
    """Refuses an ``audio`` input given as a URL whose host is not public (the SSRF guard
    also runs at the fetch, DNS can change); uploads (``upload:<id>``) need no check."""
    for name, spec in workflow.input.items():
        value = clean_input.get(name)
        if spec.type != "audio" or not isinstance(value, str) or value.startswith("upload:"):
            continue
        await _refuse_unsafe(
            value,
            settings.audio_url_allowlist,
            "invalid_input",
            f"input.{name}",
            what="audio URL",
            setting="AUDIO_URL_ALLOWLIST",
        )


async def _refuse_unsafe(
    url: str,
    allowlist: str,
    code: str,
    field: str,
    what: str = "callback_url",
    setting: str = "CALLBACK_ALLOWLIST",
) -> None:
    """A 422 ``code`` naming ``field`` when ``url`` is unsafe to call (core.ssrf, whose
    messages name ``what`` and ``setting``). A host that does not resolve now is accepted:
    the request checks it again right before it is made (and a callback retries)."""
    check = partial(check_url, url, allowlist, what=what, setting=setting)
    try:
        await anyio.to_thread.run_sync(check)
    except Unresolvable:
        return
    except UnsafeURL as exc:
        raise ApiError(422, code, str(exc), field) from None


class Submitted(NamedTuple):
    task: Task
    #: True when an earlier submission with the same Idempotency-Key made ``task``.
    replayed: bool


async def submit_task(
    services: ServicesDep, data: CreateTask, idempotency_key: str | None = None
) -> Task:
    """Validate, record, then queue one task; the one way in for the API and the CLI.

    Raises ApiError (with code and field) for anything refused; nothing is stored then.
    With an ``idempotency_key`` already used by this user, returns that task (see submit).
    """
    return (await submit(services, data, idempotency_key)).task


async def submit(
    services: ServicesDep, data: CreateTask, idempotency_key: str | None = None
) -> Submitted:
    """submit_task, telling whether the task is a replay.

    With an ``idempotency_key``: a key this user already used with the same body gives back
    that task (nothing new is stored or queued); with another body, a 409. Of concurrent
    submissions with one key, the unique index on (user_id, idempotency_key) lets one insert;
    the others read and return its task.
    """
    body_hash = None
    if idempotency_key is not None:
        _check_key(idempotency_key)
        body_hash = idempotency.request_hash(
            data.workflow, data.user_id, data.input, data.callback_url, list(data.events)
        )
        # Before validation: a replay costs one indexed read, no DNS look-up of callback_url.
        earlier = await idempotency.task_by_key(services.db, data.user_id, idempotency_key)
        if earlier is not None:
            return Submitted(_same_body(earlier, body_hash), replayed=True)

    workflow = services.workflows.get(data.workflow)
    if workflow is None:
        known = ", ".join(sorted(services.workflows))
        raise ApiError(
            422,
            "unknown_workflow",
            f"no workflow '{data.workflow}' (known: {known})",
            "workflow",
        )
    try:
        clean_input = validate_input(workflow, data.input)
    except InputError as exc:
        raise ApiError(422, "invalid_input", exc.message, exc.field) from None
    await _check_callback_url(data.callback_url, services.settings)
    await _check_audio_urls(workflow, clean_input, services.settings)

    task = Task(
        id=str(uuid.uuid4()),
        workflow=workflow.name,
        workflow_version=workflow.version,
        user_id=data.user_id,
        status=TaskStatus.QUEUED,
        input=clean_input,
        callback_url=data.callback_url,
        outputs=[],
        audio_s=0.0,
        created_at=utcnow(),
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        callback_events=sorted(set(data.events) - {"completed"}) or None,
    )
    plan = services.plans[workflow.name]
    # Limits (429, 503) after validation, so a 422 spends no budget, and before anything is
    # stored; a replay was answered above and is never refused. Not stored or queued after
    # all: the task's slot is given back.
    admission = await services.limits.admit(plan, task.user_id, task.id)
    try:
        if idempotency_key is None:
            await insert_task(services.db, task)
            inserted = True
        else:
            task, inserted = await idempotency.insert_task_once(services.db, task)
    except BaseException:
        await admission.release()
        raise
    if not inserted:
        await admission.release()
        assert body_hash is not None
        return Submitted(_same_body(task, body_hash), replayed=True)
    # Sent only after the commit above, so a worker never sees a task that is not there.
    # pika blocks: publish from a thread, never on the event loop.
    try:
        await services.publish(plan, task.id)
    except Exception as exc:
        log.error("could not queue task %s: %s", task.id, exc)
        await admission.release()
        await finish_task(
            services.db,
            task.id,
            TaskStatus.FAILED,
            error_code="queue_unavailable",
            error_message="the task could not be queued; submit it again",
        )
        if idempotency_key is not None:
            # "Submit it again" must then work with the same key, not replay this failure.
            await idempotency.release_key(services.db, task.id)
        raise ApiError(503, "queue_unavailable", "the queue is unavailable; retry later") from None
    return Submitted(task, replayed=False)


def _check_key(key: str) -> None:
    if not key or len(key) > idempotency.MAX_KEY_LENGTH:
        raise ApiError(
            400,
            "invalid_request",
            f"the Idempotency-Key must be 1 to {idempotency.MAX_KEY_LENGTH} characters",
            "Idempotency-Key",
        )


def _same_body(task: Task, body_hash: str) -> Task:
    """``task`` when it was submitted with this body, else the 409 of a reused key."""
    if task.request_hash != body_hash:
        raise ApiError(
            409,
            "idempotency_conflict",
            f"this Idempotency-Key was already used for task {task.id} with another body; "
            "use a new key for a new request",
            "Idempotency-Key",
        )
    return task


class TaskController(Controller):
    path = "/v1/tasks"
    tags = ("tasks",)

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        summary="Submit a task",
        description="Validates the input against the workflow's schema, records the task and "
        "queues it. Answers at once; poll GET /v1/tasks/{task_id} or wait for the callback.\n\n"
        "With an `Idempotency-Key` header, submitting again with the same key and body (a "
        "retry after a timeout) returns the task the first submission made, with status 200 "
        "and its current view; nothing new is queued. Keys are kept with their task, well over "
        "24 hours. The same key with another body is a 409.",
        responses={
            200: ResponseSpec(
                data_container=TaskOut,
                description="A replay: this key was already used with this body; the current "
                "view of the task it made",
            ),
            400: error_response(
                "Malformed JSON, a body of the wrong shape, or an empty or over-long "
                "Idempotency-Key"
            ),
            403: error_response("user_id is not the user of X-User-Scope"),
            409: error_response("The Idempotency-Key was already used with another body"),
            413: error_response("The body is over the size limit (1 MB)"),
            422: error_response("Unknown workflow, invalid input or invalid callback URL"),
            429: error_response(
                "The user is over RATE_LIMIT_PER_MINUTE (code `rate_limited`) or has "
                "MAX_ACTIVE_TASKS_PER_USER tasks queued or running (`too_many_active_tasks`); "
                "nothing was stored. Retry after the seconds in the Retry-After header"
            ),
            503: error_response(
                "The queue is unavailable (`queue_unavailable`), or a queue of this workflow "
                "holds more than MAX_QUEUE_DEPTH waiting messages (`queue_full`, with "
                "Retry-After); nothing was queued"
            ),
        },
    )
    async def create(
        self,
        data: CreateTask,
        services: ServicesDep,
        idempotency_key: str | None = Parameter(
            header=IDEMPOTENCY_HEADER,
            required=False,
            # No min/max_length here: Litestar would name the field `idempotency_key` in its
            # 400; submit() checks the length and names the header. The document says it.
            schema_extra={"minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
            description="Any string unique per request of this user (a UUID, say), 1 to "
            f"{idempotency.MAX_KEY_LENGTH} characters. A retry with the same key and body "
            "returns the original task instead of a new one.",
        ),
        user_scope: str | None = None,
    ) -> Response[TaskOut]:
        scoped_user(data.user_id, user_scope)  # a 403 for another user's submission
        submitted = await submit(services, data, idempotency_key)
        task = submitted.task
        if submitted.replayed:
            # 200, not 202: nothing was accepted by this request, and the view may already be
            # that of a running or finished task. It is still the same resource, so Location
            # stays (a client that follows it after either answer needs no special case), and
            # Idempotent-Replayed says outright that this is a replay.
            live = None if TaskStatus(task.status).terminal else await services.state.get(task.id)
            runs = await stage_runs.runs(services.db, task.id)
            return Response(
                task_view(task, services.store, live, runs),
                status_code=HTTP_200_OK,
                headers={"location": f"/v1/tasks/{task.id}", "idempotent-replayed": "true"},
            )
        return Response(
            task_view(task, services.store),
            status_code=HTTP_202_ACCEPTED,
            headers={"location": f"/v1/tasks/{task.id}"},
        )

    @get(
        "/{task_id:str}",
        summary="A task's status and result",
        responses={404: error_response("No such task")},
    )
    async def read(self, task_id: str, services: ServicesDep, user_scope: str | None) -> TaskOut:
        task = await find_task(services.db, task_id, user_scope)
        live = await services.state.get(task_id) if not TaskStatus(task.status).terminal else None
        return task_view(task, services.store, live, await stage_runs.runs(services.db, task_id))

    @get(
        "/",
        summary="A user's recent tasks, newest first",
        responses={
            400: error_response("Missing user_id (required without X-User-Scope)"),
            403: error_response("user_id is not the user of X-User-Scope"),
        },
    )
    async def list_tasks(
        self,
        services: ServicesDep,
        user_scope: str | None,
        user_id: str | None = user_id_parameter("Whose tasks"),
        limit: int = Parameter(default=20, ge=1, le=100),
    ) -> TaskList:
        user = scoped_user(user_id, user_scope)
        tasks = await recent_tasks(services.db, user, limit)
        return TaskList(tasks=[task_view(t, services.store) for t in tasks])

    @get(
        "/{task_id:str}/events",
        summary="Live status and progress (server-sent events)",
        description="`status` events carry the task view whenever it changes; the last event, "
        "`done`, carries the final view, then the stream ends. Send the bearer token as a "
        "header (read the stream with fetch; EventSource cannot send headers).",
        media_type="text/event-stream",  # for the document; ServerSentEvent sets its own
        responses={404: error_response("No such task")},
    )
    async def events(
        self, task_id: str, services: ServicesDep, user_scope: str | None
    ) -> ServerSentEvent:
        await find_task(services.db, task_id, user_scope)
        return ServerSentEvent(task_events(services, task_id))

    @get(
        "/{task_id:str}/callbacks",
        summary="The callback deliveries of a task, one entry per try (newest last)",
        description="Each try of a callback delivery: its `webhook_id` (the same for every try "
        "of one delivery), the HTTP status the receiver answered, or the error when none came, "
        "and what came of it (`outcome`): `retrying` with the time of the next try, `gave_up` "
        "after the last try of the schedule, `delivered` or `refused`.",
        responses={404: error_response("No such task")},
    )
    async def callback_attempts(
        self, task_id: str, services: ServicesDep, user_scope: str | None
    ) -> CallbackAttemptList:
        await find_task(services.db, task_id, user_scope)
        rows = await callbacks.attempts(services.db, task_id)
        return CallbackAttemptList(
            attempts=[
                CallbackAttemptOut(
                    webhook_id=r.webhook_id,
                    attempt=r.attempt,
                    url=r.url,
                    status_code=r.status_code,
                    error=r.error,
                    latency_ms=r.latency_ms,
                    created_at=r.created_at,
                    outcome=CallbackOutcome(r.outcome) if r.outcome else None,
                    next_attempt_at=r.next_attempt_at,
                )
                for r in rows
            ]
        )


async def task_events(services: ServicesDep, task_id: str) -> AsyncIterator[ServerSentEventMessage]:
    """Polls the row and the short-lived state, sending the view when it changes.

    Polling keeps one code path for Redis and the in-memory state; at POLL_S it costs one
    primary-key read per open stream.
    """
    last: bytes | None = None
    quiet = 0.0
    deadline = anyio.current_time() + EVENTS_MAX_S
    while anyio.current_time() < deadline:
        task = await get_task(services.db, task_id)
        if task is None:
            return
        terminal = TaskStatus(task.status).terminal
        live = None if terminal else await services.state.get(task_id)
        view = task_view(task, services.store, live, await stage_runs.runs(services.db, task_id))
        if terminal:
            yield ServerSentEventMessage(event="done", data=msgspec.json.encode(view).decode())
            return
        body = msgspec.json.encode(msgspec.structs.replace(view, outputs=[]))
        if body != last:
            last, quiet = body, 0.0
            yield ServerSentEventMessage(event="status", data=body.decode())
        elif quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield ServerSentEventMessage(comment="keep-alive")
        await anyio.sleep(POLL_S)
        quiet += POLL_S
