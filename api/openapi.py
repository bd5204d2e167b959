"""Puts each workflow's input schema into the OpenAPI document, so a client generated from
it (or a reader of /schema) sees what ``input`` takes for every workflow; and makes the
document's error responses the ones the API really sends."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin

from api.errors import ErrorBody
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
    create = schemas.get("CreateTask", {})
    properties = create.get("properties", {})
    if properties:
        # The body refuses unknown fields (forbid_unknown_fields), which Litestar leaves out.
        create["additionalProperties"] = False
    if "workflow" in properties:
        properties["workflow"]["enum"] = sorted(workflows)
    body = properties.get("input")
    if body is not None:
        # anyOf, not oneOf: two workflows may accept the same object; `workflow` decides.
        body["anyOf"] = [{"$ref": ref} for ref in refs.values()]
        body["description"] = "Inputs of the chosen workflow: " + ", ".join(
            f"{wf} -> {ref.rsplit('/', 1)[1]}" for wf, ref in refs.items()
        )
        body["x-workflow-inputs"] = refs


_ERROR_REF = "#/components/schemas/ErrorBody"


def document_errors(app: Litestar) -> None:
    """Makes each operation's error responses the ones the API sends (see api/errors.py).

    Litestar documents a 400 of its own shape (``status_code``, ``detail``) on every route
    that has parameters, but the API answers an ErrorBody, and a route whose only parameters
    are path strings can never answer 400. Every route behind the bearer token can answer
    401, and every route that reads a query, a header or a body can answer the 422 of text
    with a control character (api/screening.py): no route lists these itself.
    """
    document: dict[str, Any] = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorBody" not in schemas:
        _, components = msgspec.json.schema_components(
            [ErrorBody], ref_template="#/components/schemas/{name}"
        )
        schemas.update(components)

    def error(description: str) -> dict[str, Any]:
        content = {"application/json": {"schema": {"$ref": _ERROR_REF}}}
        return {"description": description, "content": content}

    for item in document.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if "400" in responses and _litestar_400(responses["400"]):
                if _may_be_malformed(operation):
                    responses["400"] = error(
                        "A parameter or the body is missing or of the wrong type "
                        "(code `invalid_request`, with the field)"
                    )
                else:
                    del responses["400"]
            if operation.get("security", document.get("security")):
                responses.setdefault(
                    "401", error("No valid `Authorization: Bearer <token>` header")
                )
            if _reads_text(operation):
                if "422" in responses:
                    more = _INVALID_TEXT[0].lower() + _INVALID_TEXT[1:]
                    responses["422"]["description"] += "; or " + more
                else:
                    responses["422"] = error(_INVALID_TEXT)


_INVALID_TEXT = (
    "A query parameter, header or body string holds a control character other than tab, "
    "line feed and carriage return (code `invalid_text`, with the field)"
)


def _reads_text(operation: dict[str, Any]) -> bool:
    """Whether the screening of text applies: the operation reads a query, a header or a
    JSON body (path parameters are ids, looked up or refused as such)."""
    body = operation.get("requestBody", {}).get("content", {})
    return "application/json" in body or any(
        p.get("in") in ("query", "header") for p in operation.get("parameters", [])
    )


def _litestar_400(response: dict[str, Any]) -> bool:
    """True for the 400 Litestar documents by itself (the ValidationException's shape)."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return "status_code" in schema.get("properties", {}) or any(
        "status_code" in s.get("properties", {}) for s in schema.get("oneOf", [])
    )


def _may_be_malformed(operation: dict[str, Any]) -> bool:
    """Whether Litestar's validation can refuse a request: it has a body, a parameter that is
    not a plain string, or a required query or header parameter (which may be missing). An
    optional header of any text (X-User-Scope) cannot be refused."""
    return "requestBody" in operation or any(
        not _plain_string(p.get("schema", {}))
        or (p.get("in") != "path" and p.get("required", False))
        for p in operation.get("parameters", [])
    )


def _plain_string(schema: dict[str, Any]) -> bool:
    """A string schema with no constraint (``{"type": "string"}``, maybe or null); words for
    people (description, title, examples) constrain nothing."""
    schema = {k: v for k, v in schema.items() if k not in ("description", "title", "examples")}
    if schema == {"type": "string"}:
        return True
    variants = schema.get("oneOf")
    return (
        isinstance(variants, list)
        and set(schema) == {"oneOf"}
        and all(v in ({"type": "string"}, {"type": "null"}) for v in variants)
    )
