"""What the API process holds: settings, connections, the broker and the compiled workflows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeAlias

import dramatiq
from litestar.di import NamedDependency

from api.limits import Limits
from core.backends import Media, State, api_token, database_url, make_media, make_state
from core.settings import Settings
from core.signing import secret_key, webhook_secret
from db.engine import Database
from tasks.lifecycle import Lifecycle
from workflows.catalog import stage_catalog
from workflows.compiler import Plan, compile_workflow, declare_queues
from workflows.loader import load_configured
from workflows.spec import Workflow


@dataclass
class Services:
    settings: Settings
    token: str
    db: Database
    state: State
    store: Media
    broker: dramatiq.Broker
    workflows: dict[str, Workflow]
    plans: dict[str, Plan]
    #: Per-user rate limit and quota, and queue back-pressure, checked by POST /v1/tasks.
    limits: Limits
    #: Publishes run on these long-lived threads: Dramatiq keeps a RabbitMQ connection per
    #: thread, and a pool that retires idle threads (anyio's) leaks one connection each time.
    publisher: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="publish")
    )

    @classmethod
    def build(cls, settings: Settings, broker: dramatiq.Broker) -> Services:
        """Check the settings and workflows and create the clients (no connection yet).

        ``broker`` is the process's broker with every stage actor declared on it (the
        composition root sets it up: ``aimarket.app``); the workflows may use those stages.
        Raises SettingsError or WorkflowError, so a broken deployment refuses to start.
        """
        token = api_token(settings)
        # Fail at start, not at the first callback, when the signing secret is missing or bad.
        secret_key(webhook_secret(settings))
        catalog = stage_catalog(broker)
        workflows = load_configured(settings, catalog)
        plans = {name: compile_workflow(wf, catalog.queues) for name, wf in workflows.items()}
        declare_queues(broker, plans)
        db, state = Database(database_url(settings)), make_state(settings)
        return cls(
            settings=settings,
            token=token,
            db=db,
            state=state,
            store=make_media(settings),
            broker=broker,
            workflows=workflows,
            plans=plans,
            limits=Limits.build(settings, state, broker, db, workflows),
        )

    @cached_property
    def lifecycle(self) -> Lifecycle:
        """The task transitions (submit, cancel, resume, end), publishing on ``publisher``."""
        return Lifecycle(
            self.settings,
            self.db,
            self.state,
            self.broker,
            self.plans,
            self.workflows,
            self.publisher,
        )

    async def close(self) -> None:
        self.publisher.shutdown(wait=False)
        await self.db.dispose()
        await self.state.close()


#: How a route handler asks for the services: declared, not inferred by name (Litestar 3
#: drops inferred dependencies).
ServicesDep: TypeAlias = NamedDependency[Services]
