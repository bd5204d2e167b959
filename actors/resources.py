"""The connections a worker process uses, opened lazily on its event loop and shared by
its actors."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

import dramatiq

from actors.handoff import Handoff
from core.backends import Media, State, database_url, make_media, make_state
from core.settings import Settings, get_settings
from db.engine import Database
from workflows.compiler import Plan, compile_workflow
from workflows.loader import load_configured
from workflows.spec import Stage, Workflow


@dataclass
class Resources:
    settings: Settings

    @cached_property
    def db(self) -> Database:
        return Database(database_url(self.settings), pool_size=4)

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
    def workflows(self) -> dict[str, Workflow]:
        return load_configured(self.settings)

    @cached_property
    def plans(self) -> dict[str, Plan]:
        from actors.registry import STAGE_QUEUES

        return {name: compile_workflow(wf, STAGE_QUEUES) for name, wf in self.workflows.items()}

    @cached_property
    def broker(self) -> dramatiq.Broker:
        return dramatiq.get_broker()

    def stage(self, workflow: str, stage_id: str) -> Stage:
        """A main or handler stage of a workflow."""
        return self.plans[workflow].step(stage_id).stage


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
