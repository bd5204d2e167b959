"""The record of callback deliveries: one row per try (see ``actors/webhooks.py``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from db.engine import Database
from db.models import CallbackAttempt, CallbackOutcome, Task
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
    outcome: CallbackOutcome,
    next_attempt_at: datetime | None = None,
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
        outcome=outcome,
        next_attempt_at=next_attempt_at,
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


async def pending_deliveries(
    db: Database, due_after: datetime, due_before: datetime, limit: int
) -> list[tuple[Task, datetime]]:
    """Ended tasks whose final callback's last try asked for another, due in the window, and
    no later try has come: waiting for its time, or, once that has passed, lost (an
    in-process queue that stopped, say). Oldest due first. Only the terminal callback
    (``webhook_id`` ``{task_id}:{status}``) counts: intermediate events are best-effort. Each
    task comes with the time its next try is due."""
    later = aliased(CallbackAttempt)
    superseded = (
        select(later.id)
        .where(
            later.task_id == CallbackAttempt.task_id,
            later.webhook_id == CallbackAttempt.webhook_id,
            later.attempt > CallbackAttempt.attempt,
        )
        .exists()
    )
    async with db.session() as session:
        rows = await session.execute(
            select(Task, CallbackAttempt.next_attempt_at)
            .join(CallbackAttempt, CallbackAttempt.task_id == Task.id)
            .where(
                CallbackAttempt.outcome == CallbackOutcome.RETRYING,
                CallbackAttempt.next_attempt_at > due_after,
                CallbackAttempt.next_attempt_at < due_before,
                CallbackAttempt.webhook_id == Task.id + ":" + Task.status,
                ~superseded,
            )
            .order_by(CallbackAttempt.next_attempt_at)
            .limit(limit)
        )
        return [(task, due) for task, due in rows if due is not None]
