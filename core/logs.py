"""Structured logs: with ``LOG_FORMAT=json`` every record is one JSON object per line.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, plus
``task_id``, ``workflow``, ``stage`` and ``user_id`` whenever the code that logs runs inside a
:func:`log_context` (the stage actor wrapper sets the first three for every stage run; the API
sets what the request names). The fields travel in a context variable, so they follow an
``async`` task and :func:`asyncio.to_thread`, and never leak from one task into another.

Only what code passes to ``log.*`` is written: the settings (which hold secrets) never are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

#: The fields a log line carries when they are known.
CONTEXT_FIELDS = ("task_id", "workflow", "stage", "user_id")

_context: ContextVar[dict[str, str] | None] = ContextVar("aimarket_log_context", default=None)


def _fields() -> dict[str, str]:
    return _context.get() or {}


def current_context() -> dict[str, str]:
    """The task fields known here (a copy)."""
    return dict(_fields())


def bind(**fields: Any) -> None:
    """Add fields to the current context (until the enclosing task or :func:`log_context`
    ends). ``None`` values are ignored."""
    _context.set({**_fields(), **_clean(fields)})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within the block, log records carry ``fields`` (``None`` values are ignored)."""
    token = _context.set({**_fields(), **_clean(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def _clean(fields: dict[str, Any]) -> dict[str, str]:
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"unknown log context fields: {', '.join(sorted(unknown))}")
    return {k: str(v) for k, v in fields.items() if v is not None}


class ContextFilter(logging.Filter):
    """Copies the context's fields onto each record (as attributes); lets every record pass.

    Attach it to handlers, not loggers: a handler's filters see the records that propagate
    to it from every logger.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is None:
                value = _fields().get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def use_json(handler: logging.Handler) -> None:
    """Make ``handler`` write JSON lines with the task fields."""
    handler.setFormatter(JsonFormatter())
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())


def configure_root(log_format: str) -> None:
    """Apply ``LOG_FORMAT`` to the handlers the root logger already has (a Dramatiq worker
    process's, which write to the pipe its main process prints)."""
    if log_format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        use_json(handler)


#: Libraries whose INFO and DEBUG lines are noise or worse: pika logs every connection; httpx
#: logs every request with its full URL (a callback or audio URL may carry a marketplace's
#: secret in its query string); aiosqlite logs every statement with its parameters at DEBUG,
#: botocore its signed requests. Their warnings are what an operator needs, even at DEBUG.
QUIET_LOGGERS = (
    "pika", "httpx", "httpcore", "aiosqlite", "botocore", "boto3", "s3transfer", "urllib3",
)  # fmt: skip


def quiet_libraries() -> None:
    """WARNING for QUIET_LOGGERS (a worker process; the API gets it from litestar_logging)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def litestar_logging(level: str, log_format: str) -> dict[str, Any]:
    """Keyword arguments for Litestar's ``LoggingConfig``."""
    loggers: dict[str, dict[str, Any]] = {
        name: {"level": "WARNING", "propagate": True} for name in QUIET_LOGGERS
    }
    if log_format != "json":
        return {"root": {"level": level, "handlers": ["queue_listener"]}, "loggers": loggers}
    return {
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"task_context": {"()": ContextFilter}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["task_context"],
            }
        },
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            **loggers,
            "litestar": {"level": level, "handlers": ["json"], "propagate": False},
        },
    }


#: Uvicorn's loggers with handlers of their own (its access log stays as `serve` set it).
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")


def route_uvicorn_to_root() -> None:
    """Make uvicorn's loggers write through the root handlers (JSON) instead of their own."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
