"""Every error leaves the API as ``{"code", "message", "field"?}``: a stable machine-readable
code, a sentence for people, and the offending field for validation errors."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi import ResponseSpec

from tasks.errors import Refused

log = logging.getLogger(__name__)


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


def error_response(description: str) -> ResponseSpec:
    """An OpenAPI response entry whose body is an ErrorBody."""
    # No generated examples: Litestar's are random strings, and the repr of a whole ErrorBody
    # as the example of an object.
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


class ApiError(Refused):
    """A refusal of the API's own (a missing task, a scope): the same shape as the task
    lifecycle's :class:`tasks.errors.Refused`, which every route may raise as it is."""


def _json(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def api_error(_: Request[Any, Any, Any], exc: Refused) -> Response[Any]:
    body = ErrorBody(code=exc.code, message=exc.message, field=exc.field)
    return _json(exc.status, body, headers=exc.headers or None)


_PATH = re.compile(r"`?\$\.([\w.\[\]]+)`?")


_FIELD_IN_MESSAGE = re.compile(r"field `([^`]+)`")


def validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Litestar's body/query validation: a body or parameter of the wrong shape."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(first.get("message") or exc.detail)
    field = first.get("key") or None
    # For the body as a whole Litestar names "data"; msgspec's message names the real field.
    named = _FIELD_IN_MESSAGE.search(message)
    if field == "data" and named:
        field = named.group(1)
    path = _PATH.search(message)
    if path:
        field = path.group(1)
        message = _PATH.sub("", message).replace(" - at ", "").strip(" -")
    return _json(400, ErrorBody(code="invalid_request", message=message, field=field))


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, NotAuthorizedException):
        return _json(
            401,
            ErrorBody(code="unauthorized", message=exc.detail),
            headers={"www-authenticate": "Bearer"},
        )
    if isinstance(exc, NotFoundException):
        return _json(404, ErrorBody(code="not_found", message=exc.detail))
    if exc.status_code == 400:
        # What reaches here as a bare 400 is a body msgspec could not decode.
        message = f"the body is not valid JSON: {exc.detail}"
        return _json(400, ErrorBody(code="malformed_json", message=message))
    code = {405: "method_not_allowed", 413: "body_too_large", 429: "rate_limited"}.get(
        exc.status_code, "http_error"
    )
    # Kept: a 405's Allow (RFC 9110 requires it), a 429's Retry-After.
    return _json(exc.status_code, ErrorBody(code=code, message=exc.detail), headers=exc.headers)


def internal_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # The details go to the log, never to the client (they may hold hosts or credentials).
    log.exception("unhandled error", exc_info=exc)
    return _json(500, ErrorBody(code="internal_error", message="internal error"))


HANDLERS: dict[type[Exception] | int, Any] = {
    Refused: api_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: internal_error,
}
