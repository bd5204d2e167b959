"""The record of callback deliveries: one row per try (see ``actors/webhooks.py``)."""

from __future__ import annotations

from sqlalchemy import func, select

from db.engine import Database
from db.models import CallbackAttempt
from db.tasks import utcnow


async def next_attempt(db: Database, task_id: str, webhook_id: str) -> int:
    """The number of the coming try of this delivery (1 for the first)."""
    async with db.session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(CallbackAttempt)
            .where(CallbackAttempt.task_id == task_id, CallbackAttempt.webhook_id == webhook_id)
        )
    return int(count or 0) + 1


async def record_attempt(
    db: Database,
    *,
    task_id: str,
    webhook_id: str,
    attempt: int,
    url: str,
    status_code: int | None,
    error: str | None,
    latency_ms: int,
) -> CallbackAttempt:
    row = CallbackAttempt(
        task_id=task_id,
        webhook_id=webhook_id,
        attempt=attempt,
        url=url,
        status_code=status_code,
        error=error[:2000] if error else None,
        latency_ms=latency_ms,
        created_at=utcnow(),
    )
    async with db.session() as session, session.begin():
        session.add(row)
    return row


async def attempts(db: Database, task_id: str) -> list[CallbackAttempt]:
    """Every try for the task, oldest first (newest last)."""
    async with db.session() as session:
        rows = await session.scalars(
            select(CallbackAttempt)
            .where(CallbackAttempt.task_id == task_id)
            .order_by(CallbackAttempt.id)
        )
        return list(rows)
