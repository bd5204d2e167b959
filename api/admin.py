"""The admin API (``/v1/admin``), guarded by ``ADMIN_TOKEN``, never by the marketplace's token:
the messages Dramatiq dead-lettered (listed with their error, retried or discarded) and a
sweep on demand.

Dead letters live where Dramatiq puts them: on RabbitMQ the ``<queue>.XQ`` queues (kept 7
days), in embedded mode the in-process broker's ``dead_letters_by_queue``. RabbitMQ has no
way to read a queue without taking its messages, so a listing takes them with ``basic_get``
(not acknowledged) on a connection of its own and closes the channel, which puts every one
back where it was; for the instant of a listing they are invisible to another reader. A
retry publishes the message again on its original queue (confirmed) before it acknowledges
(removes) the dead letter, so a crash in between leaves a duplicate, never a loss.

A dead letter keeps the options of its last *delivery*: Dramatiq records a traceback when it
schedules a retry, not when it gives up. The worker therefore keeps the traceback of the
attempt that failed for good under the message id (``actors.failures.record_final_error``,
in Redis; the in-process broker's dead letter carries it itself), and the listing shows that
one, falling back on the message's own. The error of the task, which ``task.fail`` recorded,
is shown beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
import dramatiq
import msgspec
import pika
import pika.exceptions
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import q_name, xq_name
from litestar import Router, get, post
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter

from api.errors import ApiError, error_response
from api.services import ServicesDep
from core.settings import Settings, SettingsError
from db.models import Task, TaskStatus
from db.tasks import get_task
from tasks.sweep import Sweeper, SweepReport

log = logging.getLogger(__name__)

#: Actors whose messages are simply sent again: a delivery to the client, or an ending.
RESEND_ACTORS = frozenset({"task.callback", "task.fail"})
#: Options of a failed delivery that a retried message must not carry.
FAILURE_OPTIONS = ("retries", "traceback", "requeue_timestamp", "eta")
#: The 403 of every admin route while ADMIN_TOKEN is unset.
OFF = "The admin API is off: ADMIN_TOKEN is not set (code `admin_disabled`)"
#: Most messages a retry or discard looks through in one queue to find its message.
SCAN_LIMIT = 100_000


def check_admin_token(settings: Settings, marketplace_token: str) -> None:
    """Refuse to start when ADMIN_TOKEN equals the marketplace's token: one leaked token must
    not open both APIs."""
    admin = settings.admin_token
    if admin and hmac.compare_digest(admin.encode(), marketplace_token.encode()):
        raise SettingsError("ADMIN_TOKEN must differ from MARKETPLACE_TOKEN")


def require_admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    expected = connection.app.state.services.settings.admin_token
    if not expected:
        raise ApiError(403, "admin_disabled", "the admin API is off: ADMIN_TOKEN is not set")
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not reveal how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise NotAuthorizedException("a valid 'Authorization: Bearer <ADMIN_TOKEN>' is required")


# --- Bodies ----------------------------------------------------------------------------------


class TaskError(msgspec.Struct, kw_only=True):
    code: str | None
    message: str | None


class DeadLetter(msgspec.Struct, kw_only=True):
    message_id: str
    #: The queue it failed on (its dead letters are in ``<queue>.XQ``).
    queue: str
    actor: str
    task_id: str | None
    workflow: str | None
    stage: str | None
    #: Failed attempts before the last one.
    retries: int
    #: The last line of ``traceback``, else the task's recorded error.
    error: str | None
    traceback: str | None
    #: When RabbitMQ dead-lettered it (None with the in-process broker).
    failed_at: datetime | None
    enqueued_at: datetime
    #: The task's status now (None: no such task).
    task_status: str | None = None
    task_error: TaskError | None = None


class DeadLetters(msgspec.Struct, kw_only=True):
    items: list[DeadLetter]


class DeadLetterDone(msgspec.Struct, kw_only=True):
    message_id: str
    queue: str
    action: Literal["retried", "discarded"]
    #: True when the retry reopened a failed task (failed -> running).
    reopened: bool = False


# --- Reading and taking dead letters -----------------------------------------------------------


@dataclasses.dataclass
class Letter:
    queue: str
    message: dramatiq.Message[Any]
    failed_at: datetime | None


def _queues(broker: dramatiq.Broker, only: str | None) -> list[str]:
    names = sorted(q for q in broker.get_declared_queues() if not q.endswith((".DQ", ".XQ")))
    return [q for q in names if only is None or q == only]


def list_letters(broker: dramatiq.Broker, queues: list[str], limit: int) -> list[Letter]:
    """Up to ``limit`` dead letters, oldest first per queue, left where they are. Blocking."""
    if isinstance(broker, StubBroker):
        out = []
        for queue in queues:
            for proxy in list(broker.dead_letters_by_queue.get(queue, ())):
                out.append(Letter(queue, _message(proxy), None))
        return out[:limit]
    out = []
    with _rabbitmq(broker) as connection:
        for queue in queues:
            if len(out) >= limit:
                break
            channel = connection.channel()
            try:
                while len(out) < limit:
                    method, properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
                    if method is None:
                        break
                    out.append(_letter(queue, properties, body))
            except pika.exceptions.ChannelClosedByBroker:
                continue  # never declared on this vhost: no dead letters
            finally:
                # Closing the channel returns every message it took, unacknowledged, in place.
                with contextlib.suppress(Exception):
                    channel.close()
    return out


def take_letter(
    broker: dramatiq.Broker,
    queues: list[str],
    message_id: str,
    then: Callable[[Letter, Any], None] | None,
) -> Letter | None:
    """Find the dead letter ``message_id`` and remove it, after ``then(letter, channel)``
    (which may publish it again) has returned. None when there is no such letter. Blocking."""
    if isinstance(broker, StubBroker):
        for queue in queues:
            letters = broker.dead_letters_by_queue.get(queue, [])
            for proxy in list(letters):
                if proxy.message_id == message_id:
                    letter = Letter(queue, _message(proxy), None)
                    if then is not None:
                        then(letter, None)
                    with contextlib.suppress(ValueError):
                        letters.remove(proxy)
                    return letter
        return None
    with _rabbitmq(broker) as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                channel.confirm_delivery()
                for _ in range(SCAN_LIMIT):
                    method, properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
                    if method is None:
                        break
                    letter = _letter(queue, properties, body)
                    if letter.message.message_id != message_id:
                        continue
                    if then is not None:
                        then(letter, channel)
                    channel.basic_ack(method.delivery_tag)
                    return letter
            except pika.exceptions.ChannelClosedByBroker:
                continue
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return None


def fresh_copy(message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
    """The message as first sent: its retries reset and the records of its failure gone."""
    options = {k: v for k, v in message.options.items() if k not in FAILURE_OPTIONS}
    # dataclasses.replace, not Message.copy: copy merges options, and these must go.
    return dataclasses.replace(message, queue_name=q_name(message.queue_name), options=options)


def make_resend(broker: dramatiq.Broker) -> Callable[[Letter, Any], None]:
    def resend(letter: Letter, channel: Any) -> None:
        message = fresh_copy(letter.message)
        if channel is None:  # the in-process broker
            broker.enqueue(message)
            return
        # On the dead letter's own channel (confirmed), as Dramatiq publishes: the retry is
        # in RabbitMQ before the dead letter is acknowledged.
        channel.basic_publish(
            exchange="",
            routing_key=message.queue_name,
            body=message.encode(),
            properties=pika.BasicProperties(
                delivery_mode=2, priority=message.options.get("broker_priority")
            ),
            mandatory=True,
        )

    return resend


@contextlib.contextmanager
def _rabbitmq(broker: dramatiq.Broker) -> Any:
    # A connection of its own: the broker's are per thread, and these reads hold messages.
    connection = pika.BlockingConnection(getattr(broker, "parameters"))  # noqa: B009
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def _message(proxy: Any) -> dramatiq.Message[Any]:
    # StubBroker keeps MessageProxy objects; the message itself is inside.
    return getattr(proxy, "_message", proxy)  # type: ignore[no-any-return]


def _letter(queue: str, properties: Any, body: bytes) -> Letter:
    deaths = (getattr(properties, "headers", None) or {}).get("x-death") or []
    when = deaths[0].get("time") if deaths and isinstance(deaths[0], dict) else None
    if isinstance(when, datetime):
        failed_at: datetime | None = when if when.tzinfo else when.replace(tzinfo=UTC)
    elif isinstance(when, int | float):
        failed_at = datetime.fromtimestamp(when, UTC)
    else:
        failed_at = None
    return Letter(queue, dramatiq.Message.decode(body), failed_at)


# --- What the API shows ------------------------------------------------------------------------


def _ids(message: dramatiq.Message[Any]) -> tuple[str | None, str | None, str | None]:
    """(task_id, workflow, stage) from a message's arguments."""
    args = [a if isinstance(a, str) else None for a in message.args[:3]]
    args += [None] * (3 - len(args))
    if message.actor_name == "task.fail":  # (task_id, stage_id, code, message)
        return args[0], None, args[1]
    if len(message.args) == 2:  # task.start / task.resume: (task_id, workflow)
        return args[0], args[1], None
    return args[0], args[1], args[2]


def describe(letter: Letter, task: Task | None, final: str | None = None) -> DeadLetter:
    """What the API shows of a dead letter; ``final`` is the traceback of its last attempt when
    the worker kept it (actors/failures.py), else the message's own (of the attempt before)."""
    message = letter.message
    task_id, workflow, stage = _ids(message)
    trace = final or message.options.get("traceback")
    lines = [line for line in (trace or "").splitlines() if line.strip()]
    error = lines[-1].strip() if lines else None
    task_error = None
    if task is not None and task.error_code is not None:
        task_error = TaskError(code=task.error_code, message=task.error_message)
        error = error or f"{task.error_code}: {task.error_message}"
    return DeadLetter(
        message_id=message.message_id,
        queue=letter.queue,
        actor=message.actor_name,
        task_id=task_id,
        workflow=workflow or (task.workflow if task is not None else None),
        stage=stage,
        retries=int(message.options.get("retries", 0)),
        error=error,
        traceback=trace,
        failed_at=letter.failed_at,
        enqueued_at=datetime.fromtimestamp(message.message_timestamp / 1000, UTC),
        task_status=task.status if task is not None else None,
        task_error=task_error,
    )


async def _task_of(services: ServicesDep, letter: Letter) -> Task | None:
    task_id = _ids(letter.message)[0]
    if task_id is None or len(task_id) > 36:
        return None
    return await get_task(services.db, task_id)


# --- Routes ------------------------------------------------------------------------------------


@get(
    "/dead-letters",
    summary="List dead-lettered messages",
    description="Messages that failed for good, oldest first per queue, with their error and "
    "the current status of their task. Listing leaves them in place.",
    responses={403: error_response(OFF)},
)
async def list_dead_letters(
    services: ServicesDep,
    queue: str | None = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
) -> DeadLetters:
    queues = _queues(services.broker, queue)
    letters = await anyio.to_thread.run_sync(list_letters, services.broker, queues, limit)
    tasks = await asyncio.gather(*(_task_of(services, letter) for letter in letters))
    finals = await services.state.failures([lt.message.message_id for lt in letters])
    return DeadLetters(
        items=[
            describe(lt, t, finals.get(lt.message.message_id))
            for lt, t in zip(letters, tasks, strict=True)
        ]
    )


@post(
    "/dead-letters/{message_id:str}/retry",
    status_code=200,
    summary="Retry a dead-lettered message",
    description="Sends the message again on its original queue with its retries reset, and "
    "removes the dead letter. A stage of a task that ended `failed` reopens the task first "
    "(failed -> running) so the stage can finish it; a task that succeeded or was cancelled "
    "answers 409 `task_ended` (and the message stays). Callbacks and `task.fail` messages are "
    "simply sent again.",
    responses={
        403: error_response(OFF),
        404: error_response("No such dead letter"),
        409: error_response("The task has ended for good (`task_ended`, `deadline_passed`)"),
    },
)
async def retry_dead_letter(message_id: str, services: ServicesDep) -> DeadLetterDone:
    broker = services.broker
    letter = await _find(broker, _queues(broker, None), message_id)
    reopened = False
    if letter.message.actor_name not in RESEND_ACTORS:
        reopened = await _reopen_for(services, letter)
    taken = await anyio.to_thread.run_sync(
        take_letter, broker, [letter.queue], message_id, make_resend(broker)
    )
    if taken is None:  # taken by another admin in between; a reopened task is swept later
        raise NotFoundException(f"no dead letter '{message_id}'")
    log.warning(
        "admin: retried dead letter %s (%s, task %s)%s",
        message_id,
        letter.message.actor_name,
        _ids(letter.message)[0],
        ", task reopened" if reopened else "",
    )
    return DeadLetterDone(
        message_id=message_id, queue=letter.queue, action="retried", reopened=reopened
    )


@post(
    "/dead-letters/{message_id:str}/discard",
    status_code=200,
    summary="Discard a dead-lettered message",
    responses={403: error_response(OFF), 404: error_response("No such dead letter")},
)
async def discard_dead_letter(message_id: str, services: ServicesDep) -> DeadLetterDone:
    broker = services.broker
    taken = await anyio.to_thread.run_sync(
        take_letter, broker, _queues(broker, None), message_id, None
    )
    if taken is None:
        raise NotFoundException(f"no dead letter '{message_id}'")
    log.warning("admin: discarded dead letter %s (%s)", message_id, taken.message.actor_name)
    return DeadLetterDone(message_id=message_id, queue=taken.queue, action="discarded")


@post(
    "/sweep",
    status_code=200,
    summary="Run one sweep now",
    description="Ends tasks past their deadline and resumes (or ends) tasks whose work is "
    "gone, as the periodic sweep does; answers what it did. 409 `sweep_running` when another "
    "sweep holds the lock for more than a few seconds.",
    responses={
        403: error_response(OFF),
        409: error_response("Another sweep is running (`sweep_running`)"),
    },
)
async def sweep_now(sweeper: Sweeper) -> SweepReport:
    report = await sweeper.run_once(wait_s=5.0)
    if not report.ran:
        raise ApiError(409, "sweep_running", "another sweep is running; try again shortly")
    return report


async def _find(broker: dramatiq.Broker, queues: list[str], message_id: str) -> Letter:
    def find() -> Letter | None:
        # Found by listing (left in place); taken only once the task allows it.
        for letter in list_letters(broker, queues, SCAN_LIMIT):
            if letter.message.message_id == message_id:
                return letter
        return None

    letter = await anyio.to_thread.run_sync(find)
    if letter is None:
        raise NotFoundException(f"no dead letter '{message_id}'")
    return letter


async def _reopen_for(services: ServicesDep, letter: Letter) -> bool:
    """Make the task of a stage message able to run it again; True when it was reopened."""
    task = await _task_of(services, letter)
    if task is None or not TaskStatus(task.status).terminal:
        return False  # still running (or queued), or gone: the message is simply sent again
    await services.lifecycle.reopen(task)
    return True


def admin_router(sweeper: Sweeper) -> Router:
    """The ``/v1/admin`` routes, with their own guard (not the marketplace's)."""
    return Router(
        path="/v1/admin",
        route_handlers=[list_dead_letters, retry_dead_letter, discard_dead_letter, sweep_now],
        guards=[require_admin],
        security=[{"admin": []}],
        tags=["admin"],
        dependencies={"sweeper": Provide(lambda: sweeper, sync_to_thread=False)},
    )
