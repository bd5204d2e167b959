"""POST /v1/tasks and GET /v1/tasks/{task_id}."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime

import anyio
import anyio.to_thread
import msgspec
from litestar import Controller, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from api.errors import error_response
from api.schemas import CreateTask
from api.scope import find_task, scoped_user, user_id_parameter
from api.services import ServicesDep
from db import callbacks, idempotency, stage_runs
from db.models import CallbackOutcome, Task, TaskStatus
from db.tasks import get_task, recent_tasks
from tasks.view import TaskList, TaskOut, task_view

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


async def submit_task(
    services: ServicesDep, data: CreateTask, idempotency_key: str | None = None
) -> Task:
    """Validate, record, then queue one task (``tasks.lifecycle.Lifecycle.submit``): the one
    way in for the API and the CLI. Raises ``tasks.errors.Refused`` for anything refused."""
    return (await services.lifecycle.submit(data, services.limits, idempotency_key)).task


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
            # 400; Lifecycle.submit checks the length and names the header. The document says it.
            schema_extra={"minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
            description="Any string unique per request of this user (a UUID, say), 1 to "
            f"{idempotency.MAX_KEY_LENGTH} characters. A retry with the same key and body "
            "returns the original task instead of a new one.",
        ),
        user_scope: str | None = None,
    ) -> Response[TaskOut]:
        scoped_user(data.user_id, user_scope)  # a 403 for another user's submission
        submitted = await services.lifecycle.submit(data, services.limits, idempotency_key)
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
