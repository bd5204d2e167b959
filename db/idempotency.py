"""Idempotency-Key of POST /v1/tasks: the key and a hash of the request body live on the task
row, and a unique index on (user_id, idempotency_key) decides which of two concurrent
submissions with one key creates the task."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from db.engine import Database
from db.models import Task

#: The longest key accepted (the column's length).
MAX_KEY_LENGTH = 200


def request_hash(
    workflow: str,
    user_id: str,
    input: dict[str, Any],
    callback_url: str | None,
    events: list[str] | None = None,
) -> str:
    """SHA-256 (hex) of the canonical request body: the fields as sent (before validation
    fills in defaults), keys sorted, no whitespace; so key order and spacing in the JSON the
    client sent do not matter, any other change of a value does. ``events`` counts only when
    given (as a set), so hashes of requests without it stay what they were."""
    body: dict[str, Any] = {
        "workflow": workflow,
        "user_id": user_id,
        "input": input,
        "callback_url": callback_url,
    }
    if events:
        body["events"] = sorted(set(events))
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def task_by_key(db: Database, user_id: str, key: str) -> Task | None:
    async with db.session() as session:
        result = await session.scalars(
            select(Task).where(Task.user_id == user_id, Task.idempotency_key == key)
        )
        return result.first()


async def insert_task_once(db: Database, task: Task) -> tuple[Task, bool]:
    """Insert ``task``, whose ``idempotency_key`` is set; (task, True) when it was inserted,
    (the task already holding that user's key, False) when another submission got there
    first (the unique index refused this one)."""
    assert task.idempotency_key is not None
    try:
        async with db.session() as session, session.begin():
            session.add(task)
    except IntegrityError:
        existing = await task_by_key(db, task.user_id, task.idempotency_key)
        if existing is None:  # not the key that collided
            raise
        return existing, False
    return task, True


async def release_key(db: Database, task_id: str) -> None:
    """Forget the key of a task that was never queued, so that submitting again with the
    same key (as the 503 answer asks) creates a new task instead of replaying the failure."""
    async with db.session() as session, session.begin():
        await session.execute(
            update(Task).where(Task.id == task_id).values(idempotency_key=None, request_hash=None)
        )
