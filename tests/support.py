"""Plain helpers that several test modules share (no fixtures: those live in conftest.py,
where pytest finds them without imports). conftest.py registers this module for pytest's
assertion rewriting, so its asserts report as a test module's would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pika
import redis

from core.settings import Settings
from tests.conftest import Receiver, amqp
from workflows.diagnostics import Diagnostic
from workflows.loader import check_file
from workflows.spec import Workflow

# --- Rows and messages (tests/test_api.py) ---------------------------------------------------


def rows_for(database_url: str, user_id: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return int(
                await conn.fetchval("SELECT count(*) FROM tasks WHERE user_id = $1", user_id)
            )
        finally:
            await conn.close()

    return asyncio.run(count())


def queued_messages(vhost: str) -> int:
    total = 0
    with amqp(vhost) as connection:
        for queue in ("default", "musicgen", "audiogen"):
            channel = connection.channel()
            try:
                total += channel.queue_declare(queue, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                continue  # never declared: nothing was ever queued there
    return total


# --- Signatures (tests/test_webhooks.py) -----------------------------------------------------


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does, written from the Standard Webhooks spec alone."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(part.split(",", 1)[1], expected)
        for part in headers["webhook-signature"].split()
        if part.startswith("v1,")
    )


# --- The admin stack's tasks (tests/test_admin.py) -------------------------------------------


def wait_for_status(
    receiver: Receiver, task_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    """The first callback for ``task_id`` that reports ``status``."""
    deadline = time.monotonic() + timeout
    with receiver.event:
        while True:
            for body in receiver.calls:
                if body.get("task_id") == task_id and body.get("status") == status:
                    return body
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no '{status}' callback for {task_id} within {timeout}s")
            receiver.event.wait(left)


def runs(env: dict[str, str], task_id: str, stage_id: str) -> int:
    r = redis.Redis(host="127.0.0.1", port=6379, db=int(env["REDIS_DB_NAME"]))
    return int(r.get(f"aimarket:test:runs:{task_id}:{stage_id}") or 0)


def submit(client: httpx.Client, receiver: Receiver, workflow: str, **inputs: Any) -> str:
    response = client.post(
        "/v1/tasks",
        json={
            "workflow": workflow,
            "user_id": "admin-tests",
            "input": inputs,
            "callback_url": receiver.url,
        },
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def insert_task(
    database_url: str, workflow: str, age_s: float, callback_url: str, status: str = "queued"
) -> str:
    """A task row as POST /v1/tasks commits it, ``age_s`` old, with no message published: what
    an API that died between its commit and its publish leaves behind."""
    from db.engine import Database
    from db.models import Task
    from db.tasks import insert_task as insert

    task_id = str(uuid.uuid4())

    async def run() -> None:
        db = Database(database_url)
        try:
            await insert(
                db,
                Task(
                    id=task_id,
                    workflow=workflow,
                    workflow_version=1,
                    user_id="sweep-tests",
                    status=status,
                    input={},
                    callback_url=callback_url,
                    outputs=[],
                    audio_s=0.0,
                    created_at=datetime.fromtimestamp(time.time() - age_s, UTC),
                ),
            )
        finally:
            await db.dispose()

    asyncio.run(run())
    return task_id


# --- The workflow loader's test actors (tests/test_workflow_loader.py) -----------------------

OK = Path(__file__).parent / "workflows_ok"
OK_FILES = sorted(OK.glob("*.yaml"))

ACTORS = {
    "task.validate": "default",
    "audio.musicgen": "musicgen",
    "audio.audiogen": "audiogen",
    "media.store": "default",
    "media.visualize": "default",
    "task.aggregate": "default",
    "task.callback": "callbacks",
    "audio.mix": "default",
}
#: What each actor returns (task.callback is left out: its outputs are not checked).
ACTOR_OUTPUTS: dict[str, tuple[str, ...]] = {
    "task.validate": (),
    "task.aggregate": (),
    "media.store": ("outputs",),
    "media.visualize": ("media",),
    "audio.musicgen": ("media",),
    "audio.audiogen": ("media",),
    "audio.mix": ("media",),
}
#: A queue workers consume besides the actors' own.
EXTRA_QUEUES = ("musicgen-large",)


def check(path: Path, **options: Any) -> tuple[Workflow | None, list[Diagnostic]]:
    """check_file with the test actors, their outputs and the extra queue."""
    options.setdefault("actor_outputs", ACTOR_OUTPUTS)
    options.setdefault("extra_queues", EXTRA_QUEUES)
    return check_file(path, ACTORS, options.pop("settings", Settings()), **options)
