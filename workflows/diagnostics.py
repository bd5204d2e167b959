"""Problems found in workflow files, in the ``file:line:column`` form editors understand.

Codes are stable kebab-case identifiers (tests and tooling match on them; the wording of a
message may change). Every code the loader can produce, and what it means:

``yaml-syntax``                 the file is not valid YAML (or holds several documents)
``unreadable-file``             the file cannot be read or is not UTF-8
``not-a-mapping``               the top level is empty or not a mapping
``unknown-key``                 a key the language does not know (reserved future keys too)
``missing-key``                 a required key is absent
``duplicate-key``               the same key twice in one mapping
``wrong-type``                  a value of the wrong type (``version: "1"``, ``timeout_s: x``,
                                an expression that is not a string)
``bad-name``                    a workflow, stage, queue, input or output name breaks its pattern
``duplicate-stage``             two stages share an id
``unknown-actor``               ``actor`` names no registered actor
``unknown-setting``             ``$NAME`` names no setting (nor a ``workflows.limits`` constant)
``setting-not-numeric``         ``$NAME`` names a setting that is not a number
``unknown-type``                an input or output ``type`` the language does not know
``not-for-type``                a key that does not apply to the field's type (``enum`` on a
                                boolean, ``maximum`` on a string, ``max_length`` on a number)
``conflicting-limits``          limits that cannot be combined (``minimum`` with
                                ``exclusive_minimum``, ``enum`` with limits)
``empty-range``                 the limits leave no valid value (``minimum`` above ``maximum``)
``bad-enum``                    an empty enum, a member of the wrong type, a repeated member
``bad-default``                 a default of the wrong type, outside the limits, not in the enum
``default-clamped``             (note) a default beyond a ``minimum``/``maximum`` that is a
                                ``$SETTING`` becomes that limit (a deployment's limit must not
                                break a workflow written for the defaults)
``empty-stages``                ``stages`` is an empty list
``out-of-range``                a number outside its range (``version: 0``,
                                ``retry.max_attempts: 50``, ``timeout_s: -1``,
                                ``retry.backoff_factor: 1``, ``max_concurrency: 0``)
``timeout-over-broker-limit``   ``timeout_s`` is not below the broker's ack timeout
``backoff-over-broker-limit``   ``retry.backoff_max_s`` is not below the broker's ack timeout
``bad-retry-on``                ``retry.retry_on`` is empty, or an entry is blank, repeated,
                                not a class name or error code, or ``*`` beside others
``unknown-queue``               a stage's ``queue`` is no actor's queue nor an extra queue
``dangling-need``               ``needs`` names no main stage (or names a handler)
``self-need``                   a stage needs itself
``duplicate-need``              (warning) ``needs`` names the same stage twice
``cycle``                       stages wait on each other (the path is in the message)
``foreach-required``            ``max_concurrency`` on a stage without ``foreach``
``bad-handler``                 ``needs``, ``when``, ``foreach`` or ``max_concurrency`` in an
                                ``on_failure`` or ``finally`` handler
``bad-expression``              an expression does not compile (syntax, unknown function,
                                wrong argument count)
``unknown-reference``           an expression reads a context key, ``input.<field>`` or
                                ``stages.<id>`` that does not exist
``not-upstream``                an expression reads ``stages.<id>`` of a stage that is not
                                upstream (through ``needs``) of the reading stage
``unknown-output``              an expression reads ``stages.<id>.<key>`` that the stage's
                                actor does not return (or that stage is a ``foreach`` list)
``item-outside-foreach``        an expression reads ``item``/``index`` where there is no item
``name-mismatch``               (warning) the workflow ``name`` differs from the file stem
``duplicate-workflow``          two files define the same workflow (``load_workflows``)
``missing-dir``                 a workflow folder does not exist (``load_workflows``)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

#: ``note``: nothing is wrong, but the file does not mean exactly what it says here (a default
#: beyond a deployment's limit that became the limit, say).
Severity = Literal["error", "warning", "note"]

#: Every diagnostic code the loader can produce (see the module docstring for each meaning).
CODES = frozenset(
    {
        "yaml-syntax", "unreadable-file", "not-a-mapping", "unknown-key", "missing-key",
        "duplicate-key", "wrong-type", "bad-name", "duplicate-stage", "unknown-actor",
        "unknown-setting", "setting-not-numeric", "unknown-type", "not-for-type",
        "conflicting-limits", "empty-range", "bad-enum", "bad-default", "default-clamped",
        "empty-stages",
        "out-of-range", "timeout-over-broker-limit", "backoff-over-broker-limit",
        "bad-retry-on", "unknown-queue", "dangling-need", "self-need", "duplicate-need",
        "cycle", "foreach-required", "bad-handler", "bad-expression", "unknown-reference",
        "not-upstream", "unknown-output", "item-outside-foreach",
        "name-mismatch", "duplicate-workflow", "missing-dir",
    }
)  # fmt: skip


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
