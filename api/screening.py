"""What every request must satisfy before a route sees it: one policy, stated once, applied
by one middleware to every route.

* **Text**: no control character but tab, line feed and carriage return, in any query
  parameter, the headers whose text the API reads (``Idempotency-Key``, ``X-User-Scope``:
  the app names them), or any string (value or key) of a JSON body. Postgres cannot store NUL
  at all, and the other C0 controls are never meant in a prompt, a user id or a key; refusing
  them here means no route, log line or worker ever sees one. 422 ``invalid_text``, naming the
  field (``input.prompt``, ``user_id``, ``Idempotency-Key``): the document cannot say it, so
  it is a refusal of what the schema allows (422), not a malformed request (400).
* **JSON bodies** (of the routes that decode one): UTF-8, else 400 ``malformed_json``; at
  most ``MAX_DEPTH`` nested arrays and objects, else 400 ``body_too_deep``. Both are checked
  before the route's types decode the body, whose recursion would otherwise fail deep inside
  the framework (a 500).

Nothing has been stored when a request is refused here.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from api.errors import ApiError

__all__ = ["CONTROL", "MAX_DEPTH", "Screening", "check_text"]

#: Arrays and objects a JSON body may nest (a task body nests three: body, input, a list).
MAX_DEPTH = 32
#: C0 controls but tab (09), line feed (0a) and carriage return (0d).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def check_text(value: str, field: str) -> None:
    """The 422 ``invalid_text`` of a string holding a control character (see module doc)."""
    found = CONTROL.search(value)
    if found is not None:
        raise ApiError(
            422,
            "invalid_text",
            f"{field} contains the control character U+{ord(found.group()):04X}; text may hold "
            "no control characters but tab, line feed and carriage return",
            field,
        )


class Screening(ASGIMiddleware):
    """Applies the module's policy to each HTTP request before its route runs.

    ``text_headers`` are the headers whose text the API keeps or compares; the others it does
    not read as text (and HTTP itself forbids controls in them)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, text_headers: tuple[str, ...]) -> None:
        self.text_headers = text_headers

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive)
        for name, value in request.query_params.multi_items():
            check_text(name, "query")
            check_text(value, name)
        for name in self.text_headers:
            value = request.headers.get(name)
            if value is not None:
                check_text(value, name)
        if _decodes_json(scope):
            # Read through Request: the body is kept in the scope, so the route reads it again
            # without a second receive.
            _check_body(await request.body())
        await next_app(scope, receive, send)


def _decodes_json(scope: Scope) -> bool:
    """Whether the route decodes a JSON body into its ``data`` parameter (uploads read raw
    audio themselves, under their own size limit, and are left alone)."""
    handler = scope.get("route_handler")
    return (
        isinstance(handler, HTTPRouteHandler) and "data" in handler.parsed_fn_signature.parameters
    )


def _check_body(body: bytes) -> None:
    if not body:
        return  # the route says what a missing body means
    try:
        value = msgspec.json.decode(body)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the body is not valid JSON: not UTF-8") from None
    except RecursionError:
        raise _too_deep() from None
    except msgspec.DecodeError:
        return  # the route's own decoding answers malformed JSON, with msgspec's position
    _walk(value)


def _walk(value: Any) -> None:
    """Checks depth and text without recursion: a stack of (value, depth, path)."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            check_text(node, path or "body")
        elif isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                raise _too_deep()
            if isinstance(node, dict):
                for key, item in node.items():
                    # A key's own control characters are not repeated in the field's name.
                    name = CONTROL.sub("?", key)
                    where = f"{path}.{name}" if path else name
                    check_text(key, where)
                    stack.append((item, depth + 1, where))
            else:
                stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(node))


def _too_deep() -> ApiError:
    return ApiError(
        400,
        "body_too_deep",
        f"the body nests arrays and objects deeper than {MAX_DEPTH} levels",
    )
