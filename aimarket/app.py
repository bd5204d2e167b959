"""The API application with its broker: what ``aimarket serve`` runs.

The composition root of the API process: it sets up the Dramatiq broker (which registers
every stage actor), builds the services on it and hands them to :func:`api.app.build_app`.
In embedded mode (no RabbitMQ) the same process also runs the workers, with the API's
settings.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from actors.resources import use_settings
from aimarket.broker import is_embedded, setup_broker
from aimarket.embedded import resume_unfinished, start_worker, stop_worker
from api.app import build_app
from api.services import Services
from core.backends import database_url
from core.settings import Settings, get_settings
from db.migrate import upgrade


def build_services(settings: Settings) -> Services:
    """The API's services, on this process's broker (set up to publish)."""
    return Services.build(settings, setup_broker(settings, publisher=True))


def create_app(settings: Settings | None = None) -> Litestar:
    """Builds the app; raises SettingsError / WorkflowError before serving anything."""
    settings = settings or get_settings()
    if settings.database_dsn is None:
        # Embedded SQLite: built (and later upgraded) by the same Alembic migrations.
        upgrade(database_url(settings))
    services = build_services(settings)
    if not is_embedded(services.broker):
        return build_app(settings, services)
    # The stages run in this process: their resources come from the API's settings.
    use_settings(settings)
    return build_app(settings, services, functools.partial(embedded_workers, services))


@asynccontextmanager
async def embedded_workers(services: Services) -> AsyncIterator[None]:
    """The in-process Dramatiq workers, for as long as the API serves; the tasks and
    callbacks this process had not finished when it last stopped are queued again."""
    worker = start_worker(services)
    if worker is not None:  # None where a test starts no worker
        await resume_unfinished(services)
    try:
        yield
    finally:
        if worker is not None:
            await stop_worker(worker)
