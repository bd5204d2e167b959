"""What the API process holds: settings, connections, the broker and the compiled workflows."""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq

from aimarket.broker import setup_broker
from aimarket.settings import Settings
from aimarket.state import TaskState
from aimarket.storage import MediaStore
from db.engine import Database
from workflows.compiler import Plan, compile_workflow, declare_queues
from workflows.loader import BUILTIN_DIR, load_workflows
from workflows.spec import Workflow


@dataclass
class Services:
    settings: Settings
    db: Database
    state: TaskState
    store: MediaStore
    broker: dramatiq.Broker
    workflows: dict[str, Workflow]
    plans: dict[str, Plan]

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Check the settings and workflows and create the clients (no connection yet).

        Raises SettingsError or WorkflowError, so a broken deployment refuses to start.
        """
        settings.require("MARKETPLACE_TOKEN")
        dsn, redis_url = settings.database_dsn, settings.redis_url
        if dsn is None:
            settings.require("POSTGRES_HOST")
        if redis_url is None:
            settings.require("REDIS_HOST")
        assert dsn is not None
        assert redis_url is not None
        broker = setup_broker(settings)
        from actors.registry import STAGE_QUEUES

        workflows = load_workflows(
            [BUILTIN_DIR, *settings.extra_workflow_dirs], STAGE_QUEUES, settings
        )
        plans = {name: compile_workflow(wf, STAGE_QUEUES) for name, wf in workflows.items()}
        return cls(
            settings=settings,
            db=Database(dsn),
            state=TaskState.from_url(redis_url, settings.result_ttl),
            store=MediaStore(settings),
            broker=broker,
            workflows=workflows,
            plans=plans,
        )

    def declare_queues(self) -> None:
        declare_queues(self.broker, self.plans)

    async def close(self) -> None:
        await self.db.dispose()
        await self.state.close()
