"""The one error a task transition raises for a request it refuses.

The lifecycle knows nothing of HTTP, but every refusal maps to exactly one answer, so it
carries that answer: ``status`` is the HTTP status the API sends (``api/errors.py`` turns it
into ``{"code", "message", "field"}``), ``code`` the stable machine-readable reason the CLI
prints beside the message.
"""

from __future__ import annotations

from collections.abc import Mapping


class Refused(Exception):
    """A task request the service will not carry out; nothing was stored or queued for it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        #: Sent with the error, e.g. the Retry-After of a 429 or 503.
        self.headers = dict(headers or {})
