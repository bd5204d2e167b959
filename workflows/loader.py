"""Read workflow YAML files, check them, and build ``Workflow`` structs.

The checker works on the YAML node tree (``yaml.compose``), not on plain Python values, so
every problem can point at the line and column of the node that caused it. It never stops at
the first problem: a file is checked to the end and every diagnostic comes back at once.

Diagnostic codes (stable; tests and tooling match on them, the wording may change):

``yaml-syntax``                 the file is not valid YAML (or holds several documents)
``unreadable-file``             the file cannot be read or is not UTF-8
``not-a-mapping``               the top level is empty or not a mapping
``unknown-key``                 a key the language does not know (reserved future keys too)
``missing-key``                 a required key is absent
``duplicate-key``               the same key twice in one mapping
``wrong-type``                  a value of the wrong type (``version: "1"``, ``timeout_s: x``)
``bad-name``                    a workflow, stage, queue, input or output name breaks its pattern
``duplicate-stage``             two stages share an id
``unknown-actor``               ``actor`` names no registered actor
``unknown-setting``             ``$NAME`` names no setting
``setting-not-numeric``         ``$NAME`` names a setting that is not a number
``unknown-type``                an input or output ``type`` the language does not know
``not-for-type``                a key that does not apply to the field's type (``enum`` on a
                                boolean, ``maximum`` on a string, ``max_length`` on a number)
``conflicting-limits``          limits that cannot be combined (``minimum`` with
                                ``exclusive_minimum``, ``enum`` with limits)
``empty-range``                 the limits leave no valid value (``minimum`` above ``maximum``)
``bad-enum``                    an empty enum, a member of the wrong type, a repeated member
``bad-default``                 a default of the wrong type, outside the limits, not in the enum
``empty-stages``                ``stages`` is an empty list
``out-of-range``                a number outside its range (``version: 0``,
                                ``retry.max_attempts: 50``, ``timeout_s: -1``)
``timeout-over-broker-limit``   ``timeout_s`` is not below the broker's ack timeout
``backoff-over-broker-limit``   ``retry.backoff_max_s`` is not below the broker's ack timeout
``name-mismatch``               (warning) the workflow ``name`` differs from the file stem
``duplicate-workflow``          two files define the same workflow (``load_workflows``)
``missing-dir``                 a workflow folder does not exist (``load_workflows``)
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

import msgspec
import yaml
from yaml.constructor import SafeConstructor

from aimarket.settings import Settings
from workflows.diagnostics import Diagnostic, Severity, WorkflowError, has_errors
from workflows.spec import (
    INPUT_TYPES,
    OUTPUT_TYPES,
    InputField,
    InputType,
    OutputSpec,
    RetryPolicy,
    Scalar,
    Stage,
    Workflow,
)

__all__ = [
    "BUILTIN_DIR",
    "CODES",
    "DEFAULT_BROKER_ACK_TIMEOUT_S",
    "check_file",
    "load_workflows",
]

log = logging.getLogger(__name__)

#: The workflows shipped with the service.
BUILTIN_DIR = Path(__file__).parent / "builtin"

#: Every diagnostic code the loader can produce (see the module docstring for each meaning).
CODES = frozenset(
    {
        "yaml-syntax", "unreadable-file", "not-a-mapping", "unknown-key", "missing-key",
        "duplicate-key", "wrong-type", "bad-name", "duplicate-stage", "unknown-actor",
        "unknown-setting", "setting-not-numeric", "unknown-type", "not-for-type",
        "conflicting-limits", "empty-range", "bad-enum", "bad-default", "empty-stages",
        "out-of-range", "timeout-over-broker-limit", "backoff-over-broker-limit",
        "name-mismatch", "duplicate-workflow", "missing-dir",
    }
)  # fmt: skip

#: RabbitMQ's default ``consumer_timeout`` (30 min). Dramatiq acks a message only after the
#: actor returns, and holds a retried message unacked while its backoff runs, so a stage's
#: run time and its longest backoff must both stay below it, or RabbitMQ closes the channel
#: and redelivers the message (see dramatiq issue #827).
DEFAULT_BROKER_ACK_TIMEOUT_S = 1800.0

WORKFLOW_NAME = re.compile(r"[a-z][a-z0-9_-]*")
STAGE_ID = WORKFLOW_NAME
QUEUE_NAME = re.compile(r"[a-z][a-z0-9_.-]*")
#: Input and output names become struct fields and, later, ``input.<name>`` in expressions,
#: so they are identifiers (no hyphens).
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*")
SETTING_REF = re.compile(r"\$([A-Z][A-Z0-9_]*)")

MAX_ATTEMPTS_RANGE = (1, 20)

# Allowed keys per section, in documentation order. Adding a key to the language means adding
# it here and reading it in the matching ``_Checker.check_*`` method.
WORKFLOW_KEYS = ("name", "version", "description", "input", "outputs", "stages")
WORKFLOW_REQUIRED = ("name", "version", "stages")
STAGE_KEYS = ("id", "actor", "queue", "params", "retry", "timeout_s")
STAGE_REQUIRED = ("id", "actor")
RETRY_KEYS = ("max_attempts", "backoff_initial_s", "backoff_max_s")
OUTPUT_KEYS = ("type", "description")
NUMBER_LIMITS = ("minimum", "maximum", "exclusive_minimum", "exclusive_maximum")
LENGTH_LIMITS = ("min_length", "max_length")
FIELD_KEYS = ("type", "description", "default", "enum", *NUMBER_LIMITS, *LENGTH_LIMITS)

# Keys planned for later versions: rejected today like any unknown key, but with a hint that
# says so rather than a "did you mean" guess.
RESERVED_WORKFLOW_KEYS = ("on_failure", "finally")
RESERVED_STAGE_KEYS = ("needs", "foreach", "max_concurrency", "when", "input")

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
# Used on single scalar nodes only (it understands 0x1f, 1_000, .inf, yes/no...); building a
# scalar keeps no state, so one instance is shared.
_SCALARS = SafeConstructor()

_BROKER_HINT = (
    "RabbitMQ redelivers a message left unacked past its consumer_timeout (30 min by "
    "default); lower the value, or raise consumer_timeout and the loader's broker_ack_timeout_s"
)

Number = int | float


class _Entry(NamedTuple):
    """One ``key: value`` pair of a mapping, both as nodes (for positions)."""

    key: yaml.Node
    value: yaml.Node


@dataclass(frozen=True)
class _Limit:
    """A resolved limit of an input field, with the node and text it came from."""

    value: Number
    node: yaml.Node
    text: str  # "30" or "30 ($MAX_DURATION)", for messages


@dataclass(frozen=True)
class _Result:
    workflow: Workflow | None
    diagnostics: list[Diagnostic]
    name_node: yaml.Node | None  # where duplicate-workflow points


# --- public API ------------------------------------------------------------------------------


def check_file(
    path: Path,
    actors: Mapping[str, str],
    settings: Settings,
    broker_ack_timeout_s: float = DEFAULT_BROKER_ACK_TIMEOUT_S,
) -> tuple[Workflow | None, list[Diagnostic]]:
    """Check one workflow file and build its ``Workflow``.

    ``actors`` maps every registered actor name to its default queue; ``settings`` resolves
    ``$SETTING`` limits; ``broker_ack_timeout_s`` is RabbitMQ's ``consumer_timeout`` in
    seconds. Returns every problem found, sorted by position, and the workflow, or None when
    any problem is an error (warnings alone still give a workflow). Never raises for a bad
    file.
    """
    result = _check(path, actors, settings, broker_ack_timeout_s)
    return result.workflow, result.diagnostics


def load_workflows(
    dirs: Sequence[Path],
    actors: Mapping[str, str],
    settings: Settings,
    broker_ack_timeout_s: float = DEFAULT_BROKER_ACK_TIMEOUT_S,
) -> dict[str, Workflow]:
    """Load every ``*.yaml``/``*.yml`` file of each folder (folders in order, files sorted).

    Returns the workflows by name. Raises ``WorkflowError`` carrying the diagnostics of all
    files when any of them is an error, including two files that define the same workflow
    name (a later folder may not silently replace a workflow) and a folder that does not
    exist. Warnings are logged and do not stop the load.
    """
    diagnostics: list[Diagnostic] = []
    workflows: dict[str, Workflow] = {}
    for folder in dirs:
        if not folder.is_dir():
            diagnostics.append(_missing_dir(folder))
            continue
        for path in _workflow_files(folder):
            result = _check(path, actors, settings, broker_ack_timeout_s)
            diagnostics.extend(result.diagnostics)
            workflow = result.workflow
            if workflow is None:
                continue
            if workflow.name in workflows:
                first = workflows[workflow.name]
                diagnostics.append(_duplicate_workflow(path, result.name_node, first))
                continue
            workflows[workflow.name] = workflow
    if has_errors(diagnostics):
        raise WorkflowError(diagnostics)
    for diagnostic in diagnostics:
        log.warning("%s", diagnostic.format())
    return workflows


# --- around the checker ----------------------------------------------------------------------


def _check(
    path: Path, actors: Mapping[str, str], settings: Settings, broker_ack_timeout_s: float
) -> _Result:
    checker = _Checker(path, actors, settings, broker_ack_timeout_s)
    workflow = checker.check()
    diagnostics = sorted(checker.diagnostics, key=lambda d: (d.line, d.column))
    if has_errors(diagnostics):
        workflow = None
    return _Result(workflow, diagnostics, checker.name_node)


def _workflow_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _missing_dir(folder: Path) -> Diagnostic:
    return Diagnostic(
        file=str(folder),
        line=1,
        column=1,
        severity="error",
        code="missing-dir",
        message="the workflow folder does not exist",
        hint="check WORKFLOWS_DIRS",
    )


def _duplicate_workflow(path: Path, name_node: yaml.Node | None, first: Workflow) -> Diagnostic:
    line, column = _position(name_node)
    return Diagnostic(
        file=str(path),
        line=line,
        column=column,
        severity="error",
        code="duplicate-workflow",
        message=f"workflow {first.name!r} is already defined in {first.source}",
        hint="rename one of them: a later folder may not replace a workflow",
    )


# --- small helpers ---------------------------------------------------------------------------


def _position(node: yaml.Node | None) -> tuple[int, int]:
    """1-based line and column of a node; the top of the file when there is no node."""
    mark = node.start_mark if node is not None else None
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _describe(node: yaml.Node) -> str:
    """What a node is, for "must be X, not Y" messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    names = {
        _STR: "a string",
        _INT: "an integer",
        _FLOAT: "a number",
        _BOOL: "a boolean",
        _NULL: "empty",
        _TAG + "timestamp": "a date",
    }
    return names.get(node.tag, f"a value tagged {node.tag}")


def _is_scalar(node: yaml.Node, *tags: str) -> TypeGuard[yaml.ScalarNode]:
    """A scalar node whose resolved tag is one of ``tags``."""
    return isinstance(node, yaml.ScalarNode) and node.tag in tags


def _did_you_mean(word: str, choices: Sequence[str], prefix: str = "") -> str | None:
    """``did you mean 'stages'?`` for the nearest choice, or None when none is near."""
    matches = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{prefix}{matches[0]}'?" if matches else None


def _fmt(value: Number) -> str:
    """Numbers as a person writes them: 30.0 -> "30", 0.5 -> "0.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _applicable_limits(ftype: InputType) -> tuple[str, ...]:
    if ftype in ("integer", "number"):
        return NUMBER_LIMITS
    if ftype == "string":
        return LENGTH_LIMITS
    return ()


def _limits_hint(ftype: InputType) -> str:
    if ftype == "string":
        return "string fields take min_length and max_length"
    if ftype == "boolean":
        return "boolean fields take no limits"
    return "numeric fields take minimum, maximum, exclusive_minimum and exclusive_maximum"


def _default_value(node: yaml.Node, ftype: InputType) -> Scalar | None:
    """The default as the field's type, or None when it is not of that type. An integer
    default is fine for a number field (JSON does not tell them apart either)."""
    if ftype == "string" and _is_scalar(node, _STR):
        text: str = node.value
        return text
    if ftype == "boolean" and _is_scalar(node, _BOOL):
        return _SCALARS.construct_yaml_bool(node)
    if ftype in ("integer", "number") and _is_scalar(node, _INT):
        return _SCALARS.construct_yaml_int(node)
    if ftype == "number" and _is_scalar(node, _FLOAT):
        value = _SCALARS.construct_yaml_float(node)
        return value if math.isfinite(value) else None
    return None


def _limit_problem(value: Scalar, limits: Mapping[str, _Limit]) -> str | None:
    """Why ``value`` (already of the field's type) breaks a limit; None when it does not."""
    for key, limit in limits.items():
        if isinstance(value, str):
            length = len(value)
            if key == "min_length" and length < limit.value:
                return f"is shorter than min_length {limit.text}"
            if key == "max_length" and length > limit.value:
                return f"is longer than max_length {limit.text}"
            continue
        broken = {
            "minimum": value < limit.value,
            "maximum": value > limit.value,
            "exclusive_minimum": value <= limit.value,
            "exclusive_maximum": value >= limit.value,
        }[key]
        if broken:
            return f"breaks {key} {limit.text}"
    return None


# --- the checker -----------------------------------------------------------------------------


class _Checker:
    """Checks one file and builds its Workflow.

    Each ``check_*`` method reports its own problems and returns what it built, or None when
    the part is absent or broken. Callers tell the two apart by the error count: a part built
    from broken pieces is dropped when ``failed_since(mark)`` says an error was reported while
    checking it, and ``check`` builds the Workflow only from parts that all passed.
    """

    def __init__(
        self, path: Path, actors: Mapping[str, str], settings: Settings, broker_limit: float
    ) -> None:
        self.path = path
        self.actors = actors
        self.settings = settings
        self.broker_limit = broker_limit
        self.diagnostics: list[Diagnostic] = []
        self.name_node: yaml.Node | None = None

    # --- reporting -------------------------------------------------------------------------

    def report(
        self,
        node: yaml.Node | None,
        code: str,
        message: str,
        hint: str | None = None,
        severity: Severity = "error",
    ) -> None:
        """Add a diagnostic at ``node`` (at the top of the file when there is no node)."""
        line, column = _position(node)
        self.diagnostics.append(
            Diagnostic(
                file=str(self.path),
                line=line,
                column=column,
                severity=severity,
                code=code,
                message=message,
                hint=hint,
            )
        )

    def wrong_type(self, node: yaml.Node, what: str, expected: str) -> None:
        self.report(node, "wrong-type", f"{what} must be {expected}, not {_describe(node)}")

    def mark(self) -> int:
        return len(self.diagnostics)

    def failed_since(self, mark: int) -> bool:
        return has_errors(self.diagnostics[mark:])

    # --- the file --------------------------------------------------------------------------

    def check(self) -> Workflow | None:
        root = self.parse()
        if root is None:
            return None
        if not isinstance(root, yaml.MappingNode):
            kind = _describe(root)
            self.report(root, "not-a-mapping", f"a workflow must be a mapping, not {kind}")
            return None
        entries = self.mapping(root, "the workflow")
        self.check_keys(
            entries, root, "the workflow", WORKFLOW_KEYS, WORKFLOW_REQUIRED, RESERVED_WORKFLOW_KEYS
        )
        name = self.check_workflow_name(entries.get("name"))
        version = self.check_version(entries.get("version"))
        description = self.optional_string(entries.get("description"), "'description'")
        inputs = self.check_inputs(entries.get("input"))
        outputs = self.check_outputs(entries.get("outputs"))
        stages = self.check_stages(entries.get("stages"))
        if self.failed_since(0) or name is None or version is None or stages is None:
            return None
        return Workflow(
            name=name,
            version=version,
            description=description or "",
            input=inputs,
            outputs=outputs,
            stages=stages,
            source=str(self.path),
        )

    def parse(self) -> yaml.Node | None:
        """The root node, or None after reporting why there is none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.report(None, "unreadable-file", f"cannot read the file: {exc}")
            return None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            self.report_syntax(exc)
            return None
        except yaml.YAMLError as exc:  # e.g. a control character: there is no mark
            self.report(None, "yaml-syntax", " ".join(str(exc).split()))
            return None
        if root is None:
            self.report(None, "not-a-mapping", "the file is empty; a workflow is a mapping")
        return root

    def report_syntax(self, exc: yaml.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.diagnostics.append(
            Diagnostic(
                file=str(self.path),
                line=line,
                column=column,
                severity="error",
                code="yaml-syntax",
                message=message,
            )
        )

    # --- generic shapes --------------------------------------------------------------------

    def mapping(self, node: yaml.MappingNode, what: str) -> dict[str, _Entry]:
        """The entries of a mapping node by key. Reports keys that are not strings and
        repeated keys (the first one is kept)."""
        entries: dict[str, _Entry] = {}
        for key, value in node.value:
            if not _is_scalar(key, _STR):
                self.wrong_type(key, f"a key in {what}", "a string")
            elif key.value in entries:
                first = entries[key.value].key.start_mark.line + 1
                message = f"{key.value!r} is repeated in {what} (first on line {first})"
                self.report(key, "duplicate-key", message)
            else:
                entries[key.value] = _Entry(key, value)
        return entries

    def sub_mapping(self, node: yaml.Node, what: str) -> dict[str, _Entry] | None:
        """``mapping`` for a value that must be a mapping; None (reported) when it is not."""
        if not isinstance(node, yaml.MappingNode):
            self.wrong_type(node, what, "a mapping")
            return None
        return self.mapping(node, what)

    def check_keys(
        self,
        entries: Mapping[str, _Entry],
        node: yaml.Node,
        what: str,
        allowed: Sequence[str],
        required: Sequence[str],
        reserved: Sequence[str] = (),
    ) -> None:
        """Report unknown keys (at the key) and missing required ones (at the mapping)."""
        for key, entry in entries.items():
            if key in allowed:
                continue
            if key in reserved:
                hint = f"{key!r} is reserved for a later version of the workflow language"
            else:
                hint = _did_you_mean(key, allowed) or "valid keys: " + ", ".join(allowed)
            self.report(entry.key, "unknown-key", f"unknown key {key!r} in {what}", hint)
        for key in required:
            if key not in entries:
                self.report(node, "missing-key", f"{what} is missing the required key {key!r}")

    def string(self, node: yaml.Node, what: str) -> str | None:
        if not _is_scalar(node, _STR):
            self.wrong_type(node, what, "a string")
            return None
        value: str = node.value
        return value

    def optional_string(self, entry: _Entry | None, what: str) -> str | None:
        return None if entry is None else self.string(entry.value, what)

    def name(self, node: yaml.Node, what: str, pattern: re.Pattern[str]) -> str | None:
        """A string that must match ``pattern`` (else ``bad-name``)."""
        value = self.string(node, what)
        if value is not None and not pattern.fullmatch(value):
            self.report(node, "bad-name", f"{what} {value!r} must match {pattern.pattern}")
            return None
        return value

    def integer(self, node: yaml.Node, what: str) -> int | None:
        if not _is_scalar(node, _INT):
            self.wrong_type(node, what, "an integer")
            return None
        return _SCALARS.construct_yaml_int(node)

    def number(self, node: yaml.Node, what: str) -> Number | None:
        """An int or a finite float."""
        if _is_scalar(node, _INT):
            return _SCALARS.construct_yaml_int(node)
        if _is_scalar(node, _FLOAT):
            value = _SCALARS.construct_yaml_float(node)
            if math.isfinite(value):
                return value
            self.report(node, "wrong-type", f"{what} must be a finite number, not {node.value}")
            return None
        self.wrong_type(node, what, "a number")
        return None

    def json_value(self, node: yaml.Node, what: str, path: tuple[int, ...] = ()) -> Any:
        """The node as plain JSON data, reporting what JSON cannot hold (dates, custom tags,
        recursive aliases). Partial data comes back when something was reported."""
        if id(node) in path:  # an alias that points back at an enclosing node
            self.wrong_type(node, what, "JSON data (no recursive aliases)")
            return None
        path = (*path, id(node))
        if isinstance(node, yaml.SequenceNode):
            return [self.json_value(item, what, path) for item in node.value]
        if isinstance(node, yaml.MappingNode):
            entries = self.mapping(node, what)
            return {key: self.json_value(e.value, what, path) for key, e in entries.items()}
        if _is_scalar(node, _NULL):
            return None
        if _is_scalar(node, _STR):
            return node.value
        if _is_scalar(node, _BOOL):
            return _SCALARS.construct_yaml_bool(node)
        if _is_scalar(node, _INT, _FLOAT):
            return self.number(node, what)
        self.wrong_type(node, what, "JSON data (a string, number, boolean, list or mapping)")
        return None

    # --- name, version ---------------------------------------------------------------------

    def check_workflow_name(self, entry: _Entry | None) -> str | None:
        if entry is None:
            return None
        self.name_node = entry.value
        name = self.name(entry.value, "the workflow name", WORKFLOW_NAME)
        if name is not None and name != self.path.stem:
            self.report(
                entry.value,
                "name-mismatch",
                f"workflow {name!r} is defined in a file named {self.path.name!r}",
                f"name the file {name}{self.path.suffix}, so the workflow is easy to find",
                severity="warning",
            )
        return name

    def check_version(self, entry: _Entry | None) -> int | None:
        if entry is None:
            return None
        version = self.integer(entry.value, "'version'")
        if version is not None and version < 1:
            self.report(entry.value, "out-of-range", f"'version' must be 1 or more, not {version}")
            return None
        return version

    # --- input -----------------------------------------------------------------------------

    def check_inputs(self, entry: _Entry | None) -> dict[str, InputField]:
        if entry is None:
            return {}
        entries = self.sub_mapping(entry.value, "'input'")
        fields: dict[str, InputField] = {}
        for name, item in (entries or {}).items():
            if not FIELD_NAME.fullmatch(name):
                message = f"input field name {name!r} must match {FIELD_NAME.pattern}"
                self.report(item.key, "bad-name", message)
            field = self.check_input_field(name, item.value)
            if field is not None:
                fields[name] = field
        return fields

    def check_input_field(self, name: str, node: yaml.Node) -> InputField | None:
        what = f"input field {name!r}"
        entries = self.sub_mapping(node, what)
        if entries is None:
            return None
        mark = self.mark()
        self.check_keys(entries, node, what, FIELD_KEYS, ("type",))
        description = self.optional_string(entries.get("description"), f"'description' of {what}")
        ftype = self.check_input_type(entries.get("type"))
        if ftype is None:
            return None  # limits and defaults only make sense for a known type
        limits = self.check_limits(entries, ftype, what)
        enum = self.check_enum(entries, ftype, what, limits)
        self.check_conflicts(entries, limits, what)
        self.check_range(limits, ftype, what)
        default = self.check_default(entries.get("default"), ftype, limits, enum, what)
        if self.failed_since(mark):
            return None

        def bound(key: str) -> Number | None:
            limit = limits.get(key)
            return None if limit is None else limit.value

        def length(key: str) -> int | None:
            limit = limits.get(key)
            return None if limit is None else int(limit.value)

        return InputField(
            type=ftype,
            description=description,
            default=msgspec.UNSET if default is None else default,
            enum=tuple(enum) if enum is not None else None,
            minimum=bound("minimum"),
            maximum=bound("maximum"),
            exclusive_minimum=bound("exclusive_minimum"),
            exclusive_maximum=bound("exclusive_maximum"),
            min_length=length("min_length"),
            max_length=length("max_length"),
        )

    def check_input_type(self, entry: _Entry | None) -> InputType | None:
        if entry is None:
            return None
        value = self.string(entry.value, "an input 'type'")
        if value is None:
            return None
        for known in INPUT_TYPES:
            if value == known:
                return known
        hint = _did_you_mean(value, INPUT_TYPES) or "types: " + ", ".join(INPUT_TYPES)
        self.report(entry.value, "unknown-type", f"unknown input type {value!r}", hint)
        return None

    def check_limits(
        self, entries: Mapping[str, _Entry], ftype: InputType, what: str
    ) -> dict[str, _Limit]:
        """The limits that are present, valid and apply to ``ftype``."""
        applicable = _applicable_limits(ftype)
        limits: dict[str, _Limit] = {}
        for key in (*NUMBER_LIMITS, *LENGTH_LIMITS):
            entry = entries.get(key)
            if entry is None:
                continue
            if key not in applicable:
                message = f"{key!r} does not apply to {ftype} fields ({what})"
                self.report(entry.key, "not-for-type", message, _limits_hint(ftype))
                continue
            # Lengths and the limits of integer fields must be whole numbers: msgspec
            # rejects a float bound on an int.
            whole = ftype == "integer" or key in LENGTH_LIMITS
            limit = self.check_limit(entry.value, f"{key!r} of {what}", whole)
            if limit is not None and key in LENGTH_LIMITS and limit.value < 0:
                message = f"{key!r} of {what} must be 0 or more, not {limit.text}"
                self.report(entry.value, "out-of-range", message)
            elif limit is not None:
                limits[key] = limit
        return limits

    def check_limit(self, node: yaml.Node, what: str, whole: bool) -> _Limit | None:
        """A number or a ``$SETTING`` reference, resolved; ``whole`` asks for an integer."""
        value: Number | None
        if _is_scalar(node, _STR) and node.value.startswith("$"):
            value = self.resolve_setting(node)
            text = f"{_fmt(value)} ({node.value})" if value is not None else ""
        elif _is_scalar(node, _INT, _FLOAT):
            value = self.number(node, what)
            text = _fmt(value) if value is not None else ""
        else:
            self.wrong_type(node, what, "a number or a $SETTING reference")
            return None
        if value is None:
            return None
        if whole:
            if not float(value).is_integer():
                self.report(node, "wrong-type", f"{what} must be a whole number, not {text}")
                return None
            value = int(value)
        return _Limit(value, node, text)

    def resolve_setting(self, node: yaml.Node) -> Number | None:
        """The current value of the numeric setting that a ``$NAME`` node names."""
        ref: str = node.value
        numeric = sorted(
            name.upper()
            for name in Settings.__struct_fields__
            if _is_number(getattr(self.settings, name))
        )
        field = ref[1:].lower()
        if not SETTING_REF.fullmatch(ref) or field not in Settings.__struct_fields__:
            hint = _did_you_mean(ref[1:].upper(), numeric, prefix="$")
            self.report(node, "unknown-setting", f"no setting named {ref!r}", hint)
            return None
        value: object = getattr(self.settings, field)
        if not isinstance(value, int | float) or isinstance(value, bool):
            message = f"setting {ref} is not a number (it is {value!r})"
            hint = "numeric settings: " + ", ".join(numeric)
            self.report(node, "setting-not-numeric", message, hint)
            return None
        return value

    def check_enum(
        self,
        entries: Mapping[str, _Entry],
        ftype: InputType,
        what: str,
        limits: Mapping[str, _Limit],
    ) -> list[str | int] | None:
        entry = entries.get("enum")
        if entry is None:
            return None
        if ftype not in ("string", "integer"):
            # A boolean needs no enum; float members cannot be compared exactly.
            message = f"'enum' does not apply to {ftype} fields ({what})"
            self.report(entry.key, "not-for-type", message, "enum works on string and integer")
            return None
        if limits:
            # msgspec cannot put limits on a Literal, and limits beside a list are noise.
            message = f"'enum' cannot be combined with {', '.join(limits)} ({what})"
            self.report(entry.key, "conflicting-limits", message, "list only allowed values")
            return None
        node = entry.value
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, f"'enum' of {what}", "a list")
            return None
        if not node.value:
            self.report(node, "bad-enum", f"'enum' of {what} is empty")
            return None
        return self.enum_members(node.value, ftype, what)

    def enum_members(
        self, items: Sequence[yaml.Node], ftype: InputType, what: str
    ) -> list[str | int]:
        tag = _STR if ftype == "string" else _INT
        members: list[str | int] = []
        for item in items:
            if not _is_scalar(item, tag):
                message = f"enum members of {what} must be {ftype}s, not {_describe(item)}"
                self.report(item, "bad-enum", message)
                continue
            member = item.value if tag == _STR else _SCALARS.construct_yaml_int(item)
            if member in members:
                self.report(item, "bad-enum", f"{member!r} is repeated in the enum of {what}")
                continue
            members.append(member)
        return members

    def check_conflicts(
        self, entries: Mapping[str, _Entry], limits: dict[str, _Limit], what: str
    ) -> None:
        """``minimum`` with ``exclusive_minimum`` (or the maximums) is ambiguous; the
        exclusive one is reported and dropped so the range check sees one bound per side."""
        for inclusive, exclusive in (
            ("minimum", "exclusive_minimum"),
            ("maximum", "exclusive_maximum"),
        ):
            if inclusive in limits and exclusive in limits:
                message = f"{what} has both {inclusive!r} and {exclusive!r}"
                self.report(entries[exclusive].key, "conflicting-limits", message, "keep one")
                del limits[exclusive]

    def check_range(self, limits: Mapping[str, _Limit], ftype: InputType, what: str) -> None:
        """Report limits that leave no valid value, at the upper limit's node."""
        if ftype == "string":
            low, high = limits.get("min_length"), limits.get("max_length")
            if low is not None and high is not None and low.value > high.value:
                message = f"{what}: min_length {low.text} is above max_length {high.text}"
                self.report(high.node, "empty-range", message)
            return
        low_key = "minimum" if "minimum" in limits else "exclusive_minimum"
        high_key = "maximum" if "maximum" in limits else "exclusive_maximum"
        low, high = limits.get(low_key), limits.get(high_key)
        if low is None or high is None:
            return
        low_excl, high_excl = low_key.startswith("exclusive"), high_key.startswith("exclusive")
        if ftype == "integer":  # an exclusive integer bound is the next integer, inclusive
            empty = low.value + low_excl > high.value - high_excl
        else:
            touching = low.value == high.value and (low_excl or high_excl)
            empty = low.value > high.value or touching
        if empty:
            message = f"{what}: no value satisfies {low_key} {low.text} and {high_key} {high.text}"
            self.report(high.node, "empty-range", message)

    def check_default(
        self,
        entry: _Entry | None,
        ftype: InputType,
        limits: Mapping[str, _Limit],
        enum: Sequence[str | int] | None,
        what: str,
    ) -> Scalar | None:
        """The default, which must satisfy the field's own type, limits and enum."""
        if entry is None:
            return None
        node = entry.value
        value = _default_value(node, ftype)
        if value is None:
            article = "an" if ftype == "integer" else "a"
            message = f"the default of {what} must be {article} {ftype}, not {_describe(node)}"
            hint = "leave 'default' out to make the field required"
            self.report(node, "bad-default", message, hint if _is_scalar(node, _NULL) else None)
            return None
        problem = _limit_problem(value, limits)
        if problem is None and enum is not None and value not in enum:
            problem = "is not one of the enum members"
        if problem is not None:
            self.report(node, "bad-default", f"the default of {what} ({value!r}) {problem}")
            return None
        return value

    # --- outputs ---------------------------------------------------------------------------

    def check_outputs(self, entry: _Entry | None) -> dict[str, OutputSpec]:
        if entry is None:
            return {}
        entries = self.sub_mapping(entry.value, "'outputs'")
        outputs: dict[str, OutputSpec] = {}
        for name, item in (entries or {}).items():
            if not FIELD_NAME.fullmatch(name):
                message = f"output name {name!r} must match {FIELD_NAME.pattern}"
                self.report(item.key, "bad-name", message)
            output = self.check_output(name, item.value)
            if output is not None:
                outputs[name] = output
        return outputs

    def check_output(self, name: str, node: yaml.Node) -> OutputSpec | None:
        what = f"output {name!r}"
        entries = self.sub_mapping(node, what)
        if entries is None:
            return None
        self.check_keys(entries, node, what, OUTPUT_KEYS, ("type",))
        description = self.optional_string(entries.get("description"), f"'description' of {what}")
        type_entry = entries.get("type")
        if type_entry is None:
            return None
        value = self.string(type_entry.value, f"'type' of {what}")
        for known in OUTPUT_TYPES:
            if value == known:
                return OutputSpec(type=known, description=description)
        if value is not None:
            hint = _did_you_mean(value, OUTPUT_TYPES) or "types: " + ", ".join(OUTPUT_TYPES)
            self.report(type_entry.value, "unknown-type", f"unknown output type {value!r}", hint)
        return None

    # --- stages ----------------------------------------------------------------------------

    def check_stages(self, entry: _Entry | None) -> tuple[Stage, ...] | None:
        if entry is None:
            return None
        node = entry.value
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, "'stages'", "a list")
            return None
        if not node.value:
            self.report(node, "empty-stages", "a workflow needs at least one stage")
            return None
        stages = [self.check_stage(index, item) for index, item in enumerate(node.value, 1)]
        self.check_unique_ids(node.value)
        return tuple(stage for stage in stages if stage is not None)

    def check_unique_ids(self, items: Sequence[yaml.Node]) -> None:
        """Report every repeated stage id at its repetition, naming the first line."""
        seen: dict[str, yaml.Node] = {}
        for item in items:
            if not isinstance(item, yaml.MappingNode):
                continue
            for key, value in item.value:
                if key.value != "id" or not _is_scalar(value, _STR):
                    continue
                first = seen.setdefault(value.value, value)
                if first is not value:
                    line = first.start_mark.line + 1
                    message = f"stage id {value.value!r} is already used on line {line}"
                    self.report(value, "duplicate-stage", message)

    def check_stage(self, index: int, node: yaml.Node) -> Stage | None:
        entries = self.sub_mapping(node, f"stage {index}")
        if entries is None:
            return None
        what = f"stage {index}"
        if "id" in entries and _is_scalar(entries["id"].value, _STR):
            what = f"stage {entries['id'].value.value!r}"  # easier to find than a number
        mark = self.mark()
        self.check_keys(entries, node, what, STAGE_KEYS, STAGE_REQUIRED, RESERVED_STAGE_KEYS)
        id_entry, actor_entry, queue_entry = (entries.get(k) for k in ("id", "actor", "queue"))
        stage_id = self.name(id_entry.value, "the stage id", STAGE_ID) if id_entry else None
        actor = self.check_actor(actor_entry.value) if actor_entry else None
        queue = self.name(queue_entry.value, "the queue name", QUEUE_NAME) if queue_entry else None
        params = self.check_params(entries.get("params"), what)
        retry = self.check_retry(entries.get("retry"), what)
        timeout = self.check_timeout(entries.get("timeout_s"), what)
        if self.failed_since(mark) or stage_id is None or actor is None:
            return None
        return Stage(
            id=stage_id, actor=actor, queue=queue, params=params, retry=retry, timeout_s=timeout
        )

    def check_actor(self, node: yaml.Node) -> str | None:
        actor = self.string(node, "'actor'")
        if actor is None or actor in self.actors:
            return actor
        hint = _did_you_mean(actor, sorted(self.actors))
        self.report(node, "unknown-actor", f"no actor named {actor!r} is registered", hint)
        return None

    def check_params(self, entry: _Entry | None, what: str) -> dict[str, Any]:
        if entry is None:
            return {}
        if not isinstance(entry.value, yaml.MappingNode):
            self.wrong_type(entry.value, f"'params' of {what}", "a mapping")
            return {}
        params: dict[str, Any] = self.json_value(entry.value, f"'params' of {what}")
        return params

    def check_retry(self, entry: _Entry | None, stage: str) -> RetryPolicy:
        """The retry policy; defaults fill what the file leaves out."""
        default = RetryPolicy()
        if entry is None:
            return default
        entries = self.sub_mapping(entry.value, f"'retry' of {stage}")
        if entries is None:
            return default
        self.check_keys(entries, entry.value, f"'retry' of {stage}", RETRY_KEYS, ())
        attempts = self.check_max_attempts(entries.get("max_attempts"), stage)
        initial_what = f"'retry.backoff_initial_s' of {stage}"
        initial = self.check_seconds(entries.get("backoff_initial_s"), initial_what)
        most = self.check_seconds(entries.get("backoff_max_s"), f"'retry.backoff_max_s' of {stage}")
        policy = RetryPolicy(
            max_attempts=default.max_attempts if attempts is None else attempts,
            backoff_initial_s=default.backoff_initial_s if initial is None else initial,
            backoff_max_s=default.backoff_max_s if most is None else most,
        )
        if most is not None:
            self.check_backoff_max(entries["backoff_max_s"].value, policy, stage)
        return policy

    def check_backoff_max(self, node: yaml.Node, policy: RetryPolicy, stage: str) -> None:
        most, initial = policy.backoff_max_s, policy.backoff_initial_s
        if most < initial:
            message = (
                f"'retry.backoff_max_s' of {stage} ({_fmt(most)}) is below its "
                f"'retry.backoff_initial_s' ({_fmt(initial)})"
            )
            self.report(node, "out-of-range", message)
        elif most >= self.broker_limit:
            message = (
                f"'retry.backoff_max_s' of {stage} ({_fmt(most)}) must be below the broker's "
                f"ack timeout of {_fmt(self.broker_limit)} s: a retried message stays unacked "
                "while it waits"
            )
            self.report(node, "backoff-over-broker-limit", message, _BROKER_HINT)

    def check_max_attempts(self, entry: _Entry | None, stage: str) -> int | None:
        if entry is None:
            return None
        what = f"'retry.max_attempts' of {stage}"
        attempts = self.integer(entry.value, what)
        low, high = MAX_ATTEMPTS_RANGE
        if attempts is not None and not low <= attempts <= high:
            message = f"{what} must be between {low} and {high}, not {attempts}"
            self.report(entry.value, "out-of-range", message)
            return None
        return attempts

    def check_seconds(
        self, entry: _Entry | None, what: str, allow_zero: bool = True
    ) -> float | None:
        """A duration in seconds: a number, 0 or more (above 0 unless ``allow_zero``)."""
        if entry is None:
            return None
        value = self.number(entry.value, what)
        if value is None:
            return None
        if value < 0 or (value == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "above 0"
            self.report(entry.value, "out-of-range", f"{what} must be {bound}, not {_fmt(value)}")
            return None
        return float(value)

    def check_timeout(self, entry: _Entry | None, what: str) -> float | None:
        timeout = self.check_seconds(entry, f"'timeout_s' of {what}", allow_zero=False)
        if entry is None or timeout is None:
            return None
        if timeout >= self.broker_limit:
            message = (
                f"'timeout_s' of {what} ({_fmt(timeout)}) must be below the broker's ack timeout"
                f" of {_fmt(self.broker_limit)} s: the message is acked only when the stage ends"
            )
            self.report(entry.value, "timeout-over-broker-limit", message, _BROKER_HINT)
            return None
        return timeout
