"""Puts each workflow's input schema into the OpenAPI document, so a client generated from
it (or a reader of /schema) sees what ``input`` takes for every workflow."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin

from workflows.inputs import input_json_schema
from workflows.spec import Workflow


def schema_name(workflow: Workflow) -> str:
    return (
        "".join(part.capitalize() for part in workflow.name.replace("-", "_").split("_")) + "Input"
    )


def add_workflow_inputs(app: Litestar, workflows: dict[str, Workflow]) -> None:
    """Adds ``<Workflow>Input`` components and points ``CreateTask.input`` at them.

    The document is built once and served from the plugin's cache, so editing it here, at
    start-up, is what every later request for /schema/openapi.json gets.
    """
    document: dict[str, Any] = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    refs = {}
    for workflow in sorted(workflows.values(), key=lambda w: w.name):
        name = schema_name(workflow)
        schemas[name] = {**input_json_schema(workflow), "title": name}
        refs[workflow.name] = f"#/components/schemas/{name}"
    body = schemas.get("CreateTask", {}).get("properties", {}).get("input")
    if body is not None:
        # anyOf, not oneOf: two workflows may accept the same object; `workflow` decides.
        body["anyOf"] = [{"$ref": ref} for ref in refs.values()]
        body["description"] = "Inputs of the chosen workflow: " + ", ".join(
            f"{wf} -> {ref.rsplit('/', 1)[1]}" for wf, ref in refs.items()
        )
        body["x-workflow-inputs"] = refs
