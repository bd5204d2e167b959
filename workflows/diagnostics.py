"""Problems found in workflow files, in the ``file:line:column`` form editors understand.

Codes are stable kebab-case identifiers (tests and tooling match on them; the wording of a
message may change). The full list lives in ``workflows.loader`` next to the checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

#: ``note``: nothing is wrong, but the file does not mean exactly what it says here (a default
#: beyond a deployment's limit that became the limit, say).
Severity = Literal["error", "warning", "note"]


class Diagnostic(msgspec.Struct, frozen=True, kw_only=True):
    """One problem at one place. ``line`` and ``column`` are 1-based."""

    file: str
    line: int
    column: int
    severity: Severity
    code: str
    message: str
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def format(self) -> str:
        """``file:line:column: severity code: message``, plus an indented hint line."""
        text = f"{self.file}:{self.line}:{self.column}: {self.severity} {self.code}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    """True when any diagnostic is an error (warnings alone do not stop a load)."""
    return any(d.is_error for d in diagnostics)


class WorkflowError(Exception):
    """Workflow files failed their checks; ``diagnostics`` holds every problem found
    (warnings included), and ``str()`` shows them all, one per line."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(d.format() for d in diagnostics))
