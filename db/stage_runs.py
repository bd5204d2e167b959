"""Queries on the runs of DAG stages. Joins and fan-in rely on two database guarantees:
an INSERT that loses a primary-key race inserts nothing, and a conditional UPDATE reports
whether it changed a row. Both hold on Postgres and SQLite."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from db.engine import Database
from db.models import RunStatus, StageRun
from db.tasks import utcnow

#: Item number of the row that stands for a whole stage (foreach items are 0, 1, ...).
STAGE = -1
_SETTLED = (RunStatus.SUCCEEDED, RunStatus.SKIPPED)


def _the_run(task_id: str, stage_id: str, item: int) -> tuple[Any, ...]:
    """The WHERE clause of one run's row."""
    return (StageRun.task_id == task_id, StageRun.stage_id == stage_id, StageRun.item == item)


def _insert(db: Database) -> Any:
    dialect = postgresql if db.engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(StageRun)


async def claim(db: Database, task_id: str, stage_id: str, status: RunStatus) -> bool:
    """Create the stage's row; True only for the one caller that created it."""
    statement = (
        _insert(db)
        .values(task_id=task_id, stage_id=stage_id, item=STAGE, status=status)
        .on_conflict_do_nothing()
    )
    async with db.session() as session, session.begin():
        result = await session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def add_items(db: Database, task_id: str, stage_id: str, count: int, queued: int) -> None:
    """Rows for ``count`` foreach items; the first ``queued`` are queued, the rest pending."""
    rows = [
        {
            "task_id": task_id,
            "stage_id": stage_id,
            "item": i,
            "status": RunStatus.QUEUED if i < queued else RunStatus.PENDING,
        }
        for i in range(count)
    ]
    async with db.session() as session, session.begin():
        await session.execute(_insert(db).values(rows).on_conflict_do_nothing())


async def start(db: Database, task_id: str, stage_id: str, item: int) -> bool:
    """queued -> running. False when the run has already ended (a duplicate delivery)."""
    async with db.session() as session, session.begin():
        result = await session.execute(
            update(StageRun)
            .where(
                *_the_run(task_id, stage_id, item),
                StageRun.status.in_((RunStatus.QUEUED, RunStatus.RUNNING)),
            )
            .values(
                status=RunStatus.RUNNING, started_at=func.coalesce(StageRun.started_at, utcnow())
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def finish(
    db: Database, task_id: str, stage_id: str, item: int, status: RunStatus, output: Any = None
) -> bool:
    """End a run once: True for the caller that ended it, False if it had already ended."""
    async with db.session() as session, session.begin():
        result = await session.execute(
            update(StageRun)
            .where(
                *_the_run(task_id, stage_id, item),
                StageRun.status.not_in((*_SETTLED, RunStatus.FAILED)),
            )
            .values(status=status, output=output, finished_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def queue_next_item(db: Database, task_id: str, stage_id: str) -> int | None:
    """Move the lowest pending item to queued and return it; None when none is pending."""
    while True:
        async with db.session() as session, session.begin():
            item = await session.scalar(
                select(func.min(StageRun.item)).where(
                    StageRun.task_id == task_id,
                    StageRun.stage_id == stage_id,
                    StageRun.status == RunStatus.PENDING,
                )
            )
            if item is None:
                return None
            result = await session.execute(
                update(StageRun)
                .where(*_the_run(task_id, stage_id, item), StageRun.status == RunStatus.PENDING)
                .values(status=RunStatus.QUEUED)
            )
            if result.rowcount:  # type: ignore[attr-defined]
                return int(item)
        # Another finisher took that item at the same moment: look again.


async def runs(db: Database, task_id: str) -> list[StageRun]:
    async with db.session() as session:
        rows = await session.scalars(
            select(StageRun)
            .where(StageRun.task_id == task_id)
            .order_by(StageRun.stage_id, StageRun.item)
        )
        return list(rows)
