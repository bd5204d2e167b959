"""The durable record of every request (one row per task)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on Postgres (indexable, compact), plain JSON on SQLite for the embedded mode.
JsonType = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every database: SQLite hands back naive values, which
    were written as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_user_created", "user_id", "created_at"),
        # One task per (user, Idempotency-Key). NULL keys never collide (Postgres and SQLite).
        Index("ux_tasks_user_idempotency_key", "user_id", "idempotency_key", unique=True),
        # The sweep's candidates (migration 0006): only tasks under way are in it.
        Index(
            "ix_tasks_active_created",
            "created_at",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
        # The sweep's look for ended tasks whose client was not told (migration 0006).
        Index("ix_tasks_finished", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(100))
    workflow_version: Mapped[int]
    user_id: Mapped[str] = mapped_column(String(200))
    # Kept as a plain string (not a DB enum) so adding a status needs no type migration.
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.QUEUED)
    input: Mapped[dict[str, Any]] = mapped_column(JsonType)
    callback_url: Mapped[str | None] = mapped_column(Text)
    #: Output media: a list of {name, key, content_type, duration_s, sample_rate, size_bytes}.
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: Seconds from started to finished, stored so stats are a plain AVG on any database.
    processing_s: Mapped[float | None] = mapped_column(Float)
    #: Seconds of audio produced, summed by the stats endpoint.
    audio_s: Mapped[float] = mapped_column(Float, default=0.0)
    #: The client's Idempotency-Key of POST /v1/tasks (None without one). Rows are never
    #: deleted, so a key is remembered for as long as its task is (well over 24 hours).
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    #: SHA-256 (hex) of the canonical request body sent with that key (db.idempotency).
    request_hash: Mapped[str | None] = mapped_column(String(64))
    #: Intermediate callbacks the client asked for (``started``, ``progress``); None or empty
    #: means the terminal callback only, which is always sent.
    callback_events: Mapped[list[str] | None] = mapped_column(JsonType, nullable=True)

    def callback_target(self, default: str | None) -> str | None:
        """Where this task's callbacks go: its own URL, else ``default``
        (MARKETPLACE_CALLBACK); None when neither is set."""
        return self.callback_url or default


class RunStatus(enum.StrEnum):
    PENDING = "pending"  # a foreach item waiting for a free slot (max_concurrency)
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # its `when` was false

    @property
    def settled(self) -> bool:
        """Done in a way that lets the stages after it start."""
        return self in (RunStatus.SUCCEEDED, RunStatus.SKIPPED)


class StageRun(Base):
    """One run of a stage of a DAG workflow (``item`` -1 for the stage, 0.. for foreach items).

    The primary key is what makes a join fire once: whoever inserts a stage's row is the one
    who queues it, however many upstream messages arrive, twice or at once.
    """

    __tablename__ = "stage_runs"

    task_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    stage_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    item: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[Any] = mapped_column(JsonType, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class CallbackOutcome(enum.StrEnum):
    """What came of one try of a callback delivery."""

    #: The receiver answered 2xx.
    DELIVERED = "delivered"
    #: Final without success: a 3xx or 4xx answer (but 429), or a URL refused at delivery.
    REFUSED = "refused"
    #: Failed (network error, 5xx, 429); another try is queued for ``next_attempt_at``.
    RETRYING = "retrying"
    #: Failed, and it was the last try of the schedule: the delivery gave up.
    GAVE_UP = "gave_up"


class CallbackAttempt(Base):
    """One try at delivering a callback (``webhook_id`` is the same for every try of one
    delivery); written by the ``task.callback`` actor, listed by GET /v1/tasks/{id}/callbacks."""

    __tablename__ = "callback_attempts"
    __table_args__ = (
        Index("ix_callback_attempts_task", "task_id", "id"),
        # The sweep's look for deliveries whose next try never came (migration 0007): only
        # the tries that asked for another are in it.
        Index(
            "ix_callback_attempts_due",
            "next_attempt_at",
            postgresql_where=text("outcome = 'retrying'"),
            sqlite_where=text("outcome = 'retrying'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"))
    webhook_id: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column()
    url: Mapped[str] = mapped_column(Text)
    #: The receiver's HTTP status; None when no answer came (network error, refused URL).
    status_code: Mapped[int | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    #: What came of this try (CallbackOutcome); None on rows from before migration 0007.
    outcome: Mapped[str | None] = mapped_column(String(16))
    #: When the next try is due (``retrying`` only).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
