"""GET /v1/workflows: what can be submitted, with each workflow's input schema."""

from __future__ import annotations

import msgspec
from litestar import get

from api.schemas import WorkflowOut, WorkflowsOut
from api.services import ServicesDep
from workflows.inputs import input_json_schema


@get("/v1/workflows", tags=["workflows"], summary="The loaded workflows and their input schemas")
async def list_workflows(services: ServicesDep) -> WorkflowsOut:
    return WorkflowsOut(
        workflows=[
            WorkflowOut(
                name=wf.name,
                version=wf.version,
                description=wf.description,
                input_schema=input_json_schema(wf),
                outputs=msgspec.to_builtins(wf.outputs),
                stages=[
                    {
                        "id": plan_step.stage.id,
                        "actor": plan_step.stage.actor,
                        "queue": plan_step.queue,
                    }
                    for plan_step in services.plans[wf.name].steps
                ],
            )
            for wf in sorted(services.workflows.values(), key=lambda w: w.name)
        ]
    )
