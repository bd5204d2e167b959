"""Run the Alembic migrations from code (the CLI's `db upgrade`, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command
from db.engine import sqlite_path

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    if url:
        cfg.attributes["url"] = url
    return cfg


def upgrade(url: str | None = None, revision: str = "head", log: bool = True) -> None:
    """Bring the database at ``url`` (default: the settings') to ``revision``.

    Runs its own event loop, so call it from synchronous code (or a thread).
    """
    sqlite_file = sqlite_path(url) if url else None
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    config = alembic_config(url)
    config.attributes["configure_logging"] = log
    command.upgrade(config, revision)
