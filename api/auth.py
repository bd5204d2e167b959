"""Bearer-token guard for every route but health and docs."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    expected: str = connection.app.state.services.token
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not reveal how much of the token matched.
    if (
        scheme.lower() != "bearer"
        or not expected
        or not hmac.compare_digest(token.strip().encode(), expected.encode())
    ):
        raise NotAuthorizedException("a valid 'Authorization: Bearer <token>' header is required")
