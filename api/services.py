"""What the API process holds: settings, connections, the broker and the compiled workflows."""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq

from aimarket.backends import Media, State, api_token, database_url, make_media, make_state
from aimarket.broker import setup_broker
from aimarket.settings import Settings
from db.engine import Database
from workflows.compiler import Plan, compile_workflow, declare_queues
from workflows.loader import BUILTIN_DIR, load_workflows
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

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Check the settings and workflows and create the clients (no connection yet).

        Raises SettingsError or WorkflowError, so a broken deployment refuses to start.
        """
        token = api_token(settings)
        broker = setup_broker(settings)
        from actors.registry import STAGE_QUEUES

        workflows = load_workflows(
            [BUILTIN_DIR, *settings.extra_workflow_dirs], STAGE_QUEUES, settings
        )
        plans = {name: compile_workflow(wf, STAGE_QUEUES) for name, wf in workflows.items()}
        declare_queues(broker, plans)
        return cls(
            settings=settings,
            token=token,
            db=Database(database_url(settings)),
            state=make_state(settings),
            store=make_media(settings),
            broker=broker,
            workflows=workflows,
            plans=plans,
        )

    async def close(self) -> None:
        await self.db.dispose()
        await self.state.close()
