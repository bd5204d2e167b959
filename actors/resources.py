"""The connections a worker process uses, opened lazily on its event loop and shared by
its actors, and closed when the worker stops (:class:`WorkerResources`, a Dramatiq
middleware)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cached_property

import dramatiq
from dramatiq.asyncio import get_event_loop_thread

from actors.handoff import Handoff
from core.backends import Media, State, database_url, make_media, make_state
from core.settings import Settings, get_settings
from db.engine import Database
from tasks.lifecycle import Lifecycle
from workflows.catalog import StageCatalog, stage_catalog
from workflows.compiler import Plan, compile_workflow
from workflows.loader import load_configured
from workflows.spec import Stage, Workflow

log = logging.getLogger(__name__)


@dataclass
class Resources:
    settings: Settings

    @cached_property
    def db(self) -> Database:
        # As many connections as stages can wait on the database at once (a worker's threads
        # all run their stages on one event loop): none is opened and closed per message.
        return Database(database_url(self.settings), pool_size=DB_POOL_SIZE)

    @cached_property
    def state(self) -> State:
        return make_state(self.settings)

    @cached_property
    def store(self) -> Media:
        store = make_media(self.settings)
        store.ensure_bucket()
        return store

    @cached_property
    def handoff(self) -> Handoff:
        return Handoff(self.state, self.store)

    @cached_property
    def catalog(self) -> StageCatalog:
        return stage_catalog(self.broker)

    @cached_property
    def workflows(self) -> dict[str, Workflow]:
        return load_configured(self.settings, self.catalog)

    @cached_property
    def plans(self) -> dict[str, Plan]:
        queues = self.catalog.queues
        return {name: compile_workflow(wf, queues) for name, wf in self.workflows.items()}

    @cached_property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle(
            self.settings, self.db, self.state, self.broker, self.plans, self.workflows
        )

    @cached_property
    def broker(self) -> dramatiq.Broker:
        return dramatiq.get_broker()

    async def close(self) -> None:
        """Close what was opened (on the event loop that opened it)."""
        if "db" in self.__dict__:
            await self.db.dispose()
        if "state" in self.__dict__:
            await self.state.close()

    def stage(self, workflow: str, stage_id: str) -> Stage:
        """A main or handler stage of a workflow."""
        return self.plans[workflow].step(stage_id).stage


#: Database connections a worker process keeps (Dramatiq's default is 8 threads a process).
DB_POOL_SIZE = 8

_lock = threading.Lock()
_resources: Resources | None = None


def resources() -> Resources:
    """This process's resources, created on first use."""
    global _resources
    with _lock:
        if _resources is None:
            _resources = Resources(get_settings())
        return _resources


def use_settings(settings: Settings) -> None:
    """Make the in-process workers use these settings (embedded mode: the API's own, which
    may differ from the environment's, e.g. a --port given on the command line)."""
    global _resources
    with _lock:
        _resources = Resources(settings)


class WorkerResources(dramatiq.Middleware):
    """Opens this process's resources as its worker boots, and closes them (the database
    pool, the Redis connection) as it shuts down, on the event loop of Dramatiq's AsyncIO
    middleware: placed after AsyncIO in the broker's list, its ``after`` hooks run first,
    while that loop still runs."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        resources()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        loop = get_event_loop_thread()
        with _lock:
            res = _resources
        if loop is None or res is None:
            return
        try:
            loop.run_coroutine(res.close())
        except Exception as exc:  # shutting down anyway: say so, do not stop the shutdown
            log.warning("could not close the worker's connections: %s", exc)
