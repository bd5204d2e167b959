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

import difflib
import json
import logging
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeGuard

import msgspec
import yaml
from yaml.constructor import SafeConstructor

from core.settings import Settings
from workflows.diagnostics import Diagnostic, Severity, WorkflowError, has_errors
from workflows.expressions import (
    CONTEXT_KEYS,
    FUNCTION_NAMES,
    Expression,
    ExpressionError,
    compile_expression,
    references,
)
from workflows.graph import ancestors, cycles
from workflows.limits import CONSTANTS
from workflows.spec import (
    AUDIO_REF_MAX_LENGTH,
    AUDIO_REF_PATTERN,
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
    "LANGUAGE_SCHEMA_PATH",
    "check_file",
    "load_workflows",
]

log = logging.getLogger(__name__)

#: The workflows shipped with the service.
BUILTIN_DIR = Path(__file__).parent / "builtin"
#: The JSON Schema (draft 2020-12) of the language, for editors: with the YAML language
#: server, start a file with ``# yaml-language-server: $schema=<this path or its URL>``.
LANGUAGE_SCHEMA_PATH = Path(__file__).parent / "language.schema.json"

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

#: An entry of ``retry.retry_on``: ``*``, an exception class name (``TimeoutError``,
#: ``httpx.ReadTimeout``) or an error code (``model_unavailable``).
RETRY_ON_ENTRY = re.compile(r"\*|[A-Za-z_][A-Za-z0-9_.:-]*")

MAX_ATTEMPTS_RANGE = (1, 20)
#: ``retry.backoff_factor`` must be above the first and at most the second.
BACKOFF_FACTOR_RANGE = (1.0, 10.0)
MAX_CONCURRENCY_RANGE = (1, 100)

# Allowed keys per section, in documentation order. Adding a key to the language means adding
# it here, reading it in the matching ``_Checker.check_*`` method, and describing it in
# language.schema.json.
WORKFLOW_KEYS = (
    "name", "version", "description", "deadline_s", "input", "outputs", "stages", "on_failure",
    "finally",
)  # fmt: skip
WORKFLOW_REQUIRED = ("name", "version", "stages")
STAGE_KEYS = (
    "id", "actor", "queue", "needs", "when", "foreach", "max_concurrency", "input", "params",
    "retry", "timeout_s",
)  # fmt: skip
STAGE_REQUIRED = ("id", "actor")
#: Keys of main stages only: handlers run once the task has ended, alone.
MAIN_ONLY_KEYS = ("needs", "when", "foreach", "max_concurrency")
RETRY_KEYS = (
    "max_attempts", "backoff_initial_s", "backoff_factor", "backoff_max_s", "jitter", "retry_on"
)  # fmt: skip
OUTPUT_KEYS = ("type", "description")
NUMBER_LIMITS = ("minimum", "maximum", "exclusive_minimum", "exclusive_maximum")
LENGTH_LIMITS = ("min_length", "max_length")
FIELD_KEYS = ("type", "description", "default", "enum", *NUMBER_LIMITS, *LENGTH_LIMITS)

# What other workflow languages call our keys: an unknown key found here gets a "did you
# mean" hint for our name (when that key is allowed where it was written).
KEY_ALIASES = {
    "depends_on": "needs", "depends": "needs", "after": "needs", "requires": "needs",
    "if": "when", "condition": "when", "for_each": "foreach", "each": "foreach",
    "concurrency": "max_concurrency", "parallelism": "max_concurrency", "inputs": "input",
    "on_error": "on_failure", "on_fail": "on_failure", "always": "finally", "ensure": "finally",
}  # fmt: skip

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


_Role = Literal["when", "foreach", "input"]


class _Report(Protocol):
    """Reports a problem of one path read by an expression, at the path's ``depth``-th name."""

    def __call__(self, code: str, depth: int, message: str, hint: str | None = None) -> None: ...


@dataclass
class _Expr:
    """One expression of a stage, with its node; ``compiled`` is None when it does not
    compile (already reported)."""

    node: yaml.ScalarNode
    what: str  # "'when' of stage 'mix'", for messages
    role: _Role
    compiled: Expression | None


@dataclass
class _Draft:
    """What was read of one stage. The checks that need every stage (ids, needs, what the
    expressions read) run on drafts; a Stage is built only from a file without errors."""

    node: yaml.MappingNode
    handler: str | None  # None for a main stage, else "on_failure" or "finally"
    what: str  # "stage 'mix'", for messages
    raw_id: str | None  # the id as written, even one that breaks its pattern
    id_node: yaml.Node | None
    stage_id: str | None = None  # the id, when valid
    actor: str | None = None
    queue: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float | None = None
    needs: list[tuple[str, yaml.Node]] = field(default_factory=list)  # as written
    needs_explicit: bool = False
    needs_broken: bool = False  # some of needs could not be read or names no stage
    resolved: tuple[str, ...] = ()  # set by the graph check
    has_foreach: bool = False  # the key is there, even when its expression is broken
    when: _Expr | None = None
    foreach: _Expr | None = None
    max_concurrency: int | None = None
    inputs: dict[str, _Expr] = field(default_factory=dict)

    def expressions(self) -> list[_Expr]:
        return [e for e in (self.when, self.foreach, *self.inputs.values()) if e is not None]

    def build(self) -> Stage:
        """The Stage; only called when the file had no error, so every part is there."""
        if self.stage_id is None or self.actor is None:
            raise RuntimeError(f"{self.what} was built from a file with errors")
        return Stage(
            id=self.stage_id,
            actor=self.actor,
            queue=self.queue,
            params=self.params,
            retry=self.retry,
            timeout_s=self.timeout_s,
            needs=self.resolved,
            needs_explicit=self.needs_explicit,
            when=None if self.when is None else self.when.node.value,
            foreach=None if self.foreach is None else self.foreach.node.value,
            max_concurrency=self.max_concurrency,
            input={name: expr.node.value for name, expr in self.inputs.items()},
        )


@dataclass
class _Stages:
    main: list[_Draft]
    on_failure: list[_Draft]
    finally_: list[_Draft]

    @property
    def handlers(self) -> list[_Draft]:
        return [*self.on_failure, *self.finally_]

    @property
    def all(self) -> list[_Draft]:
        return [*self.main, *self.on_failure, *self.finally_]


@dataclass(frozen=True)
class _Result:
    workflow: Workflow | None
    diagnostics: list[Diagnostic]
    name_node: yaml.Node | None  # where duplicate-workflow points


# --- public API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What the checks know besides the file."""

    actors: Mapping[str, str]
    settings: Settings
    broker_limit: float
    actor_outputs: Mapping[str, tuple[str, ...]] | None
    queues: frozenset[str]


def check_file(
    path: Path,
    actors: Mapping[str, str],
    settings: Settings,
    broker_ack_timeout_s: float = DEFAULT_BROKER_ACK_TIMEOUT_S,
    *,
    actor_outputs: Mapping[str, tuple[str, ...]] | None = None,
    extra_queues: Collection[str] = (),
) -> tuple[Workflow | None, list[Diagnostic]]:
    """Check one workflow file and build its ``Workflow``.

    ``actors`` maps every registered actor name to its default queue; ``settings`` resolves
    ``$SETTING`` limits; ``broker_ack_timeout_s`` is RabbitMQ's ``consumer_timeout`` in
    seconds. ``actor_outputs`` maps actor names to the keys of the dict each returns, so
    ``stages.<id>.<key>`` can be checked (an actor missing from it, or None, is not checked).
    A stage's ``queue`` must be some actor's default queue or one of ``extra_queues`` (the
    queues workers are started for besides those).

    Returns every problem found, sorted by position, and the workflow, or None when any
    problem is an error (warnings alone still give a workflow). Never raises for a bad file.
    """
    context = _Context(
        actors, settings, broker_ack_timeout_s, actor_outputs, _queues(actors, extra_queues)
    )
    result = _check(path, context)
    return result.workflow, result.diagnostics


def load_workflows(
    dirs: Sequence[Path],
    actors: Mapping[str, str],
    settings: Settings,
    broker_ack_timeout_s: float = DEFAULT_BROKER_ACK_TIMEOUT_S,
    *,
    actor_outputs: Mapping[str, tuple[str, ...]] | None = None,
    extra_queues: Collection[str] = (),
) -> dict[str, Workflow]:
    """Load every ``*.yaml``/``*.yml`` file of each folder (folders in order, files sorted).

    The parameters are those of :func:`check_file`. Returns the workflows by name. Raises
    ``WorkflowError`` carrying the diagnostics of all files when any of them is an error,
    including two files that define the same workflow name (a later folder may not silently
    replace a workflow) and a folder that does not exist. Warnings are logged and do not stop
    the load.
    """
    context = _Context(
        actors, settings, broker_ack_timeout_s, actor_outputs, _queues(actors, extra_queues)
    )
    diagnostics: list[Diagnostic] = []
    workflows: dict[str, Workflow] = {}
    for folder in dirs:
        if not folder.is_dir():
            diagnostics.append(_missing_dir(folder))
            continue
        for path in _workflow_files(folder):
            result = _check(path, context)
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
        level = logging.INFO if diagnostic.severity == "note" else logging.WARNING
        log.log(level, "%s", diagnostic.format())
    return workflows


# --- around the checker ----------------------------------------------------------------------


def _queues(actors: Mapping[str, str], extra: Collection[str]) -> frozenset[str]:
    return frozenset(actors.values()) | frozenset(extra)


def _check(path: Path, context: _Context) -> _Result:
    checker = _Checker(path, context)
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


def _scalar_position(node: yaml.ScalarNode, offset: int) -> tuple[int, int]:
    """1-based line and column of the character ``offset`` places into a scalar's value.

    Exact for a plain or quoted scalar on one line without escapes (its text in the file is
    its value); for any other (escapes, block scalars, folded lines) the scalar's start.
    """
    start, end = node.start_mark, node.end_mark
    line, column = start.line + 1, start.column + 1
    if start.line != end.line or start.buffer is None:
        return line, column
    raw = start.buffer[start.pointer : end.pointer]
    offset = min(offset, len(node.value))
    if node.style is None and raw == node.value:
        return line, column + offset
    if node.style in ("'", '"') and raw == f"{node.style}{node.value}{node.style}":
        return line, column + 1 + offset
    return line, column


_FOREACH_HINT = "add foreach: <list expression> to run the stage once per item"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HYPHENATED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)+")


def _jp(name: str) -> str:
    """A field name as written in an expression: quoted unless it is an identifier."""
    return name if _IDENTIFIER.fullmatch(name) else json.dumps(name)


def _segment_offset(source: str, path: tuple[str, ...]) -> int | None:
    """Where the last name of ``path`` is in ``source`` when the path is written out as
    ``a.b.c`` (names bare or quoted); None when it is not written that way."""
    names = [rf"(?:{re.escape(name)}|{re.escape(json.dumps(name))})" for name in path]
    names[-1] = f"(?P<last>{names[-1]})"
    pattern = r"(?:(?<=@\.)|(?<![\w\".]))" + r"\s*\.\s*".join(names) + r"(?![\w\"])"
    match = re.search(pattern, source)
    return match.start("last") if match else None


def _literal_hint(node: yaml.Node) -> str:
    """How to write a YAML value that is not a string as an expression."""
    text: str | None = None
    if _is_scalar(node, _BOOL):
        text = json.dumps(_SCALARS.construct_yaml_bool(node))
    elif _is_scalar(node, _INT):
        text = str(_SCALARS.construct_yaml_int(node))
    elif _is_scalar(node, _FLOAT):
        value = _SCALARS.construct_yaml_float(node)
        text = repr(value) if math.isfinite(value) else None
    elif _is_scalar(node, _NULL):
        text = "null"
    if text is not None:
        return f'a fixed value is a JMESPath literal inside a YAML string: "`{text}`"'
    return (
        "expressions are strings; put fixed values in 'params', or write a JMESPath literal "
        'inside a YAML string, e.g. "`[1, 2]`"'
    )


def _expression_hint(source: str, exc: ExpressionError) -> str | None:
    if match := re.match(r"unknown function (\w+)\(", exc.message):
        return _did_you_mean(match[1], FUNCTION_NAMES) or "functions: " + ", ".join(FUNCTION_NAMES)
    if "'-'" in exc.message and (name := _HYPHENATED.search(source)):
        return f'a name with "-" must be quoted in an expression: "{name[0]}"'
    if re.match(r"unknown token '?[-+*/%]", exc.message):
        return "expressions have no arithmetic; functions: " + ", ".join(FUNCTION_NAMES)
    return None


def _context_hint(root: str, source: str) -> str:
    near = _did_you_mean(root, CONTEXT_KEYS)
    if near is not None:
        return near
    if source.strip() == root:
        return (
            f"for the text {root!r}, write a JMESPath string inside a YAML string: "
            f"\"'{root}'\"; expressions read input.<field>, stages.<id>, item and index"
        )
    return "expressions read input.<field>, stages.<id>, item and index"


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
    if ftype in ("boolean", "audio"):
        return f"{ftype} fields take no limits"
    return "numeric fields take minimum, maximum, exclusive_minimum and exclusive_maximum"


def _default_value(node: yaml.Node, ftype: InputType) -> Scalar | None:
    """The default as the field's type, or None when it is not of that type. An integer
    default is fine for a number field (JSON does not tell them apart either)."""
    if ftype == "string" and _is_scalar(node, _STR):
        text: str = node.value
        return text
    if ftype == "audio" and _is_scalar(node, _STR):
        ref: str = node.value
        fits = len(ref) <= AUDIO_REF_MAX_LENGTH and re.fullmatch(AUDIO_REF_PATTERN, ref)
        return ref if fits else None
    if ftype == "boolean" and _is_scalar(node, _BOOL):
        return _SCALARS.construct_yaml_bool(node)
    if ftype in ("integer", "number") and _is_scalar(node, _INT):
        return _SCALARS.construct_yaml_int(node)
    if ftype == "number" and _is_scalar(node, _FLOAT):
        value = _SCALARS.construct_yaml_float(node)
        return value if math.isfinite(value) else None
    return None


def _clamp_to_setting(value: Scalar, limits: Mapping[str, _Limit]) -> tuple[_Limit, Number] | None:
    """The limit and the new default when a numeric default is beyond a ``minimum`` or
    ``maximum`` that names a setting (``$MAX_DURATION``): an operator's lower limit then
    lowers the default with it. A limit written as a number is the author's, and a default
    beyond it stays an error (``bad-default``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    for key in ("maximum", "minimum"):
        limit = limits.get(key)
        if limit is None or not _from_setting(limit):
            continue
        if (key == "maximum" and value > limit.value) or (key == "minimum" and value < limit.value):
            # An integer field's limits are whole (check_limits): its default stays an int.
            return limit, int(limit.value) if isinstance(value, int) else limit.value
    return None


def _from_setting(limit: _Limit) -> bool:
    """A limit that is a deployment's setting (``$MAX_DURATION``), not one of the constants
    (``$MIN_DURATION``), which are the same wherever the file is loaded."""
    if not isinstance(limit.node, yaml.ScalarNode):
        return False
    text = str(limit.node.value)
    return text.startswith("$") and text[1:] not in CONSTANTS


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

    def __init__(self, path: Path, context: _Context) -> None:
        self.path = path
        self.actors = context.actors
        self.settings = context.settings
        self.broker_limit = context.broker_limit
        self.actor_outputs = context.actor_outputs
        self.queues = context.queues
        self.diagnostics: list[Diagnostic] = []
        self.name_node: yaml.Node | None = None
        #: The input field names as written (None when ``input`` is not a mapping).
        self.input_names: list[str] | None = []
        # Set by check_graph: main stages by id (first of each id), handler ids, each main
        # stage's upstream stages, and the stages whose upstream is not known for sure.
        self.main_ids: dict[str, _Draft] = {}
        self.handler_ids: set[str] = set()
        self.upstream: dict[str, frozenset[str]] = {}
        self.unsure: set[str] = set()

    # --- reporting -------------------------------------------------------------------------

    def report(
        self,
        node: yaml.Node | None,
        code: str,
        message: str,
        hint: str | None = None,
        severity: Severity = "error",
        offset: int | None = None,
    ) -> None:
        """Add a diagnostic at ``node`` (at the top of the file when there is no node), or
        ``offset`` characters into a scalar node's value when that can be placed."""
        if offset is not None and isinstance(node, yaml.ScalarNode):
            line, column = _scalar_position(node, offset)
        else:
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
        self.check_keys(entries, root, "the workflow", WORKFLOW_KEYS, WORKFLOW_REQUIRED)
        name = self.check_workflow_name(entries.get("name"))
        version = self.check_version(entries.get("version"))
        description = self.optional_string(entries.get("description"), "'description'")
        deadline = self.check_seconds(entries.get("deadline_s"), "'deadline_s'", allow_zero=False)
        inputs = self.check_inputs(entries.get("input"))
        outputs = self.check_outputs(entries.get("outputs"))
        main = self.check_stages(entries.get("stages"))
        on_failure = self.check_handlers(entries.get("on_failure"), "on_failure")
        finally_ = self.check_handlers(entries.get("finally"), "finally")
        stages = _Stages(main or [], on_failure, finally_)
        self.check_unique_ids(stages.all)
        self.check_graph(stages)
        self.check_expressions(stages)
        if self.failed_since(0) or name is None or version is None or main is None:
            return None
        return Workflow(
            name=name,
            version=version,
            description=description or "",
            deadline_s=deadline,
            input=inputs,
            outputs=outputs,
            stages=tuple(draft.build() for draft in main),
            on_failure=tuple(draft.build() for draft in on_failure),
            finally_=tuple(draft.build() for draft in finally_),
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
        suggest: Sequence[str] | None = None,
    ) -> None:
        """Report unknown keys (at the key) and missing required ones (at the mapping).
        Hints name keys of ``suggest`` (default: ``allowed``)."""
        suggest = allowed if suggest is None else suggest
        for key, entry in entries.items():
            if key in allowed:
                continue
            alias = KEY_ALIASES.get(key)
            if alias in suggest:
                hint: str | None = f"did you mean '{alias}'?"
            else:
                hint = _did_you_mean(key, suggest) or "valid keys: " + ", ".join(suggest)
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
        self.input_names = None if entries is None else list(entries)
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
        """The current value of the numeric setting (or the constant of ``workflows.limits``)
        that a ``$NAME`` node names."""
        ref: str = node.value
        if ref[1:] in CONSTANTS:
            return CONSTANTS[ref[1:]]
        numeric = sorted(
            name.upper()
            for name in Settings.__struct_fields__
            if _is_number(getattr(self.settings, name))
        )
        field = ref[1:].lower()
        if not SETTING_REF.fullmatch(ref) or field not in Settings.__struct_fields__:
            hint = _did_you_mean(ref[1:].upper(), [*numeric, *CONSTANTS], prefix="$")
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
            article = "an" if ftype in ("integer", "audio") else "a"
            message = f"the default of {what} must be {article} {ftype}, not {_describe(node)}"
            if ftype == "audio" and _is_scalar(node, _STR):
                message = (
                    f"the default of {what} must be an upload id (upload:<id>) or an http(s) "
                    f"URL of at most {AUDIO_REF_MAX_LENGTH} characters"
                )
            hint = "leave 'default' out to make the field required"
            self.report(node, "bad-default", message, hint if _is_scalar(node, _NULL) else None)
            return None
        clamped = _clamp_to_setting(value, limits)
        if clamped is not None:
            limit, new = clamped
            message = (
                f"the default of {what} ({value!r}) is beyond the limit {limit.text}: "
                f"it becomes {_fmt(new)}"
            )
            value = new
            self.report(node, "default-clamped", message, severity="note")
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

    def check_stages(self, entry: _Entry | None) -> list[_Draft] | None:
        """The main stages as drafts; None when ``stages`` is absent, not a list or empty."""
        if entry is None:
            return None
        node = entry.value
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, "'stages'", "a list")
            return None
        if not node.value:
            self.report(node, "empty-stages", "a workflow needs at least one stage")
            return None
        drafts = [self.check_stage(index, item, None) for index, item in enumerate(node.value, 1)]
        return [draft for draft in drafts if draft is not None]

    def check_handlers(self, entry: _Entry | None, key: str) -> list[_Draft]:
        """The stages of ``on_failure`` or ``finally`` (an empty list is fine)."""
        if entry is None:
            return []
        node = entry.value
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, f"{key!r}", "a list of stages")
            return []
        drafts = [self.check_stage(index, item, key) for index, item in enumerate(node.value, 1)]
        return [draft for draft in drafts if draft is not None]

    def check_unique_ids(self, drafts: Sequence[_Draft]) -> None:
        """Report every repeated stage id (main stages and handlers share one namespace) at
        its repetition, naming the first line."""
        seen: dict[str, yaml.Node] = {}
        for draft in drafts:
            if draft.raw_id is None or draft.id_node is None:
                continue
            first = seen.setdefault(draft.raw_id, draft.id_node)
            if first is not draft.id_node:
                line = first.start_mark.line + 1
                message = f"stage id {draft.raw_id!r} is already used on line {line}"
                self.report(draft.id_node, "duplicate-stage", message)

    def check_stage(self, index: int, node: yaml.Node, handler: str | None) -> _Draft | None:
        """Read one stage (a main stage when ``handler`` is None, else a handler of that
        list); the checks that need every stage come later, on the drafts."""
        label = f"stage {index}" if handler is None else f"{handler!r} stage {index}"
        entries = self.sub_mapping(node, label)
        if entries is None:
            return None
        assert isinstance(node, yaml.MappingNode)  # sub_mapping checked it
        id_entry = entries.get("id")
        raw_id: str | None = None
        if id_entry is not None and _is_scalar(id_entry.value, _STR):
            raw_id = id_entry.value.value
        what = label if raw_id is None else f"stage {raw_id!r}"  # easier to find than a number
        draft = _Draft(node, handler, what, raw_id, id_entry.value if id_entry else None)
        # A handler's main-stage keys are reported as bad-handler, so none are "unknown".
        handler_keys = [key for key in STAGE_KEYS if key not in MAIN_ONLY_KEYS]
        suggest = STAGE_KEYS if handler is None else handler_keys
        self.check_keys(entries, node, what, STAGE_KEYS, STAGE_REQUIRED, suggest)
        actor_entry, queue_entry = entries.get("actor"), entries.get("queue")
        draft.stage_id = self.name(id_entry.value, "the stage id", STAGE_ID) if id_entry else None
        draft.actor = self.check_actor(actor_entry.value) if actor_entry else None
        draft.queue = self.check_queue(queue_entry.value) if queue_entry else None
        if handler is None:
            draft.needs = self.check_needs(entries.get("needs"), draft)
            draft.has_foreach = "foreach" in entries
            draft.when = self.expression(entries.get("when"), f"'when' of {what}", "when")
            foreach_what = f"'foreach' of {what}"
            draft.foreach = self.expression(entries.get("foreach"), foreach_what, "foreach")
            draft.max_concurrency = self.check_max_concurrency(
                entries.get("max_concurrency"), what, draft.has_foreach
            )
        else:
            self.check_handler_keys(entries, what, handler)
        draft.inputs = self.check_stage_input(entries.get("input"), what)
        draft.params = self.check_params(entries.get("params"), what)
        draft.retry = self.check_retry(entries.get("retry"), what)
        draft.timeout_s = self.check_timeout(entries.get("timeout_s"), what)
        return draft

    def check_handler_keys(self, entries: Mapping[str, _Entry], what: str, handler: str) -> None:
        for key in MAIN_ONLY_KEYS:
            if key in entries:
                message = f"{key!r} is not allowed in the {handler!r} handler {what}"
                hint = (
                    "handlers run one after another once the task has ended: "
                    "they take no needs, when, foreach or max_concurrency"
                )
                self.report(entries[key].key, "bad-handler", message, hint)

    def check_actor(self, node: yaml.Node) -> str | None:
        actor = self.string(node, "'actor'")
        if actor is None or actor in self.actors:
            return actor
        hint = _did_you_mean(actor, sorted(self.actors))
        self.report(node, "unknown-actor", f"no actor named {actor!r} is registered", hint)
        return None

    def check_queue(self, node: yaml.Node) -> str | None:
        """A queue name that some worker consumes: an actor's queue or an extra queue."""
        queue = self.name(node, "the queue name", QUEUE_NAME)
        if queue is None or queue in self.queues:
            return queue
        known = sorted(self.queues)
        hint = _did_you_mean(queue, known) or "known queues: " + ", ".join(known)
        message = f"no worker consumes queue {queue!r}: it is no actor's queue nor an extra queue"
        self.report(node, "unknown-queue", message, hint)
        return None

    def check_needs(self, entry: _Entry | None, draft: _Draft) -> list[tuple[str, yaml.Node]]:
        """The stage ids of ``needs`` as written, with their nodes (checked against the other
        stages later). Sets ``draft.needs_explicit``, and ``draft.needs_broken`` when some of
        it could not be read."""
        if entry is None:
            return []
        draft.needs_explicit = True
        node = entry.value
        what = f"'needs' of {draft.what}"
        if not isinstance(node, yaml.SequenceNode):
            if _is_scalar(node, _STR):
                hint = f"write needs: [{node.value}]"
            else:
                hint = "write needs: [stage, ...], or needs: [] for a stage that waits for nothing"
            self.report(node, "wrong-type", f"{what} must be a list, not {_describe(node)}", hint)
            draft.needs_broken = True
            return []
        needs: list[tuple[str, yaml.Node]] = []
        for item in node.value:
            if _is_scalar(item, _STR):
                needs.append((item.value, item))
            else:
                self.wrong_type(item, f"an entry of {what}", "a stage id")
                draft.needs_broken = True
        return needs

    def check_max_concurrency(
        self, entry: _Entry | None, what: str, has_foreach: bool
    ) -> int | None:
        if entry is None:
            return None
        if not has_foreach:
            message = f"'max_concurrency' of {what} applies only to a stage with 'foreach'"
            hint = "add foreach: <list expression>, or remove max_concurrency"
            self.report(entry.key, "foreach-required", message, hint)
        what = f"'max_concurrency' of {what}"
        value = self.integer(entry.value, what)
        low, high = MAX_CONCURRENCY_RANGE
        if value is not None and not low <= value <= high:
            message = f"{what} must be between {low} and {high}, not {value}"
            self.report(entry.value, "out-of-range", message)
            return None
        return value

    def check_stage_input(self, entry: _Entry | None, what: str) -> dict[str, _Expr]:
        if entry is None:
            return {}
        entries = self.sub_mapping(entry.value, f"'input' of {what}")
        inputs: dict[str, _Expr] = {}
        for name, item in (entries or {}).items():
            if not FIELD_NAME.fullmatch(name):
                message = f"input name {name!r} of {what} must match {FIELD_NAME.pattern}"
                self.report(item.key, "bad-name", message)
            expr = self.expression(item, f"input {name!r} of {what}", "input")
            if expr is not None:
                inputs[name] = expr
        return inputs

    def expression(self, entry: _Entry | None, what: str, role: _Role) -> _Expr | None:
        """An expression, compiled; None when absent or not a string. A string that does
        not compile gives an ``_Expr`` without ``compiled`` (reported here)."""
        if entry is None:
            return None
        node = entry.value
        if not _is_scalar(node, _STR):
            message = f"{what} must be an expression (a string), not {_describe(node)}"
            self.report(node, "wrong-type", message, _literal_hint(node))
            return None
        compiled: Expression | None = None
        try:
            compiled = compile_expression(node.value)
        except ExpressionError as exc:
            message = f"{what} is not a valid expression: {exc.message}"
            hint = _expression_hint(node.value, exc)
            self.report(node, "bad-expression", message, hint, offset=exc.offset)
        return _Expr(node, what, role, compiled)

    def check_params(self, entry: _Entry | None, what: str) -> dict[str, Any]:
        if entry is None:
            return {}
        if not isinstance(entry.value, yaml.MappingNode):
            self.wrong_type(entry.value, f"'params' of {what}", "a mapping")
            return {}
        params: dict[str, Any] = self.json_value(entry.value, f"'params' of {what}")
        return params

    # --- the stage graph -------------------------------------------------------------------

    def check_graph(self, stages: _Stages) -> None:
        """Resolve every main stage's needs; report dangling, self and repeated needs and
        cycles; work out each stage's upstream stages for the expression checks."""
        self.main_ids = {}
        for draft in stages.main:
            if draft.raw_id is not None:
                self.main_ids.setdefault(draft.raw_id, draft)
        self.handler_ids = {
            d.raw_id for d in stages.handlers if d.raw_id and d.raw_id not in self.main_ids
        }
        deps: dict[str, tuple[str, ...]] = {}
        previous: _Draft | None = None
        for draft in stages.main:
            draft.resolved = self.resolve_needs(draft, previous)
            if draft.raw_id is not None and self.main_ids[draft.raw_id] is draft:
                deps[draft.raw_id] = draft.resolved
            previous = draft
        for path in cycles(deps):
            self.report_cycle(path)
        self.upstream = ancestors(deps)
        self.unsure = {
            name
            for name, draft in self.main_ids.items()
            if draft.needs_broken or any(self.main_ids[a].needs_broken for a in self.upstream[name])
        }

    def resolve_needs(self, draft: _Draft, previous: _Draft | None) -> tuple[str, ...]:
        if not draft.needs_explicit:
            if previous is None or draft.needs_broken:
                return ()
            if previous.raw_id is None:  # the stage before has no usable id
                draft.needs_broken = True
                return ()
            return (previous.raw_id,)
        names: list[str] = []
        for name, node in draft.needs or ():
            if name == draft.raw_id:
                message = f"stage {name!r} needs itself"
                self.report(node, "self-need", message, "a stage cannot wait for itself")
            elif name in names:
                message = f"'needs' of {draft.what} names {name!r} twice"
                self.report(node, "duplicate-need", message, severity="warning")
            elif name not in self.main_ids:
                draft.needs_broken = True
                self.report_dangling(draft, name, node)
            else:
                names.append(name)
        return tuple(names)

    def report_dangling(self, draft: _Draft, name: str, node: yaml.Node) -> None:
        hint: str | None
        if name in self.handler_ids:
            message = f"{draft.what} needs {name!r}, which is a handler (on_failure/finally)"
            hint = "handlers run after the task has ended; no stage can wait for one"
        else:
            message = f"{draft.what} needs {name!r}, but there is no stage {name!r}"
            ids = list(self.main_ids)
            hint = _did_you_mean(name, ids)
            if hint is None and ids:
                hint = "stages: " + ", ".join(ids)
        self.report(node, "dangling-need", message, hint)

    def report_cycle(self, path: tuple[str, ...]) -> None:
        """Report a cycle at its first stage: at the ``needs`` entry that closes it, or at
        the stage's id when that need is the implicit one (the stage before it)."""
        head = self.main_ids[path[0]]
        closing = path[-2]  # head runs after this one
        node = next((n for name, n in head.needs or () if name == closing), head.id_node)
        message = "stages wait on each other: " + " -> ".join(path)
        if any(not self.main_ids[name].needs_explicit for name in path[:-1]):
            hint = (
                "a stage without 'needs' runs after the stage before it in the list; "
                "give it 'needs' (needs: [] for none) to change that"
            )
        else:
            hint = "each stage runs after the stages it needs: drop one of these needs"
        self.report(node, "cycle", message, hint)

    # --- expressions -----------------------------------------------------------------------

    def check_expressions(self, stages: _Stages) -> None:
        """Check what every compiled expression reads against the context it will see."""
        for draft in stages.all:
            upstream: frozenset[str] | None = None
            if draft.handler is None and draft.raw_id is not None:
                first = self.main_ids[draft.raw_id] is draft
                if first and draft.raw_id not in self.unsure:
                    upstream = self.upstream[draft.raw_id]
            for expr in draft.expressions():
                if expr.compiled is None:
                    continue
                seen: set[tuple[str, tuple[str, ...]]] = set()
                for path in sorted(references(expr.compiled)):
                    self.check_reference(draft, expr, path, upstream, seen)

    def check_reference(
        self,
        draft: _Draft,
        expr: _Expr,
        path: tuple[str, ...],
        upstream: frozenset[str] | None,
        seen: set[tuple[str, tuple[str, ...]]],
    ) -> None:
        """One path read by ``expr`` of ``draft``. ``upstream`` is None when the stage's
        upstream stages are unknown (a handler, or needs that could not be read)."""

        def report(code: str, depth: int, message: str, hint: str | None = None) -> None:
            if (code, path[: depth + 1]) in seen:
                return
            seen.add((code, path[: depth + 1]))
            offset = _segment_offset(expr.node.value, path[: depth + 1])
            self.report(expr.node, code, message, hint, offset=offset)

        root, what = path[0], expr.what
        if root not in CONTEXT_KEYS:
            message = f"{what} reads {root!r}, which is not in the expression context"
            report("unknown-reference", 0, message, _context_hint(root, expr.node.value))
        elif root in ("item", "index"):
            if expr.role == "input" and draft.has_foreach:
                return
            if expr.role in ("when", "foreach"):
                why = "'when' and 'foreach' are evaluated once for the stage, before any item"
            elif draft.handler is not None:
                why = "handlers have no foreach items"
            else:
                why = f"{draft.what} has no 'foreach'"
            hint = None if draft.handler or expr.role != "input" else _FOREACH_HINT
            report("item-outside-foreach", 0, f"{what} reads {root!r}, but {why}", hint)
        elif len(path) > 1 and root == "input":
            self.check_input_reference(path[1], what, report)
        elif len(path) > 1:
            self.check_stage_reference(draft, path, what, upstream, report)

    def check_input_reference(self, name: str, what: str, report: _Report) -> None:
        names = self.input_names
        if names is None or name in names:
            return
        message = f"{what} reads input.{_jp(name)}, but the workflow has no input field {name!r}"
        hint = _did_you_mean(name, names, prefix="input.")
        if hint is None:
            hint = "input fields: " + ", ".join(names) if names else "the workflow has no input"
        report("unknown-reference", 1, message, hint)

    def check_stage_reference(
        self,
        draft: _Draft,
        path: tuple[str, ...],
        what: str,
        upstream: frozenset[str] | None,
        report: _Report,
    ) -> None:
        name = path[1]
        ref = f"stages.{_jp(name)}"
        target = self.main_ids.get(name)
        if target is None:
            if name in self.handler_ids:
                message = (
                    f"{what} reads {ref}, a handler: handlers run after the task has ended, "
                    "so no stage sees their output"
                )
                report("not-upstream", 1, message)
                return
            message = f"{what} reads {ref}, but there is no stage {name!r}"
            report("unknown-reference", 1, message, _did_you_mean(name, list(self.main_ids)))
            return
        if draft.handler is None and name == draft.raw_id:
            message = f"{what} reads {ref}, the output of its own stage"
            report("not-upstream", 1, message, "a stage's output exists only once it has run")
            return
        if upstream is not None and draft.raw_id is not None and name not in upstream:
            message = f"{what} reads {ref}, but {name!r} is not upstream of {draft.raw_id!r}"
            if draft.raw_id in self.upstream.get(name, ()):
                hint = f"{name!r} runs after {draft.raw_id!r}: it needs it, directly or not"
            else:
                needs = ", ".join((*draft.resolved, name))
                hint = f"make {draft.raw_id!r} wait for it: needs: [{needs}]"
            report("not-upstream", 1, message + " (it may not have run yet)", hint)
            return
        if len(path) > 2:
            self.check_output_reference(target, path[2], what, report)

    def check_output_reference(self, target: _Draft, key: str, what: str, report: _Report) -> None:
        ref = f"stages.{_jp(target.raw_id or '')}"
        if target.has_foreach:
            message = (
                f"{what} reads {ref}.{_jp(key)}, but {target.raw_id!r} has 'foreach': its "
                "output is the list of its items' outputs"
            )
            report("unknown-output", 2, message, f"read {ref}[*].{_jp(key)}")
            return
        outputs = self.actor_outputs
        if outputs is None or target.actor is None or target.actor not in outputs:
            return
        known = outputs[target.actor]
        if key in known:
            return
        message = f"{what} reads {ref}.{_jp(key)}, but actor {target.actor!r} returns no {key!r}"
        hint = _did_you_mean(key, known, prefix=f"{ref}.")
        if hint is None:
            hint = "it returns " + ", ".join(known) if known else "it returns no fields"
        report("unknown-output", 2, message, hint)

    # --- retry and time limits -------------------------------------------------------------

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
        factor = self.check_backoff_factor(entries.get("backoff_factor"), stage)
        jitter = self.boolean(entries.get("jitter"), f"'retry.jitter' of {stage}")
        retry_on = self.check_retry_on(entries.get("retry_on"), stage)
        policy = RetryPolicy(
            max_attempts=default.max_attempts if attempts is None else attempts,
            backoff_initial_s=default.backoff_initial_s if initial is None else initial,
            backoff_max_s=default.backoff_max_s if most is None else most,
            backoff_factor=default.backoff_factor if factor is None else factor,
            jitter=default.jitter if jitter is None else jitter,
            retry_on=default.retry_on if retry_on is None else retry_on,
        )
        if most is not None:
            self.check_backoff_max(entries["backoff_max_s"].value, policy, stage)
        return policy

    def boolean(self, entry: _Entry | None, what: str) -> bool | None:
        if entry is None:
            return None
        if not _is_scalar(entry.value, _BOOL):
            self.wrong_type(entry.value, what, "true or false")
            return None
        return _SCALARS.construct_yaml_bool(entry.value)

    def check_backoff_factor(self, entry: _Entry | None, stage: str) -> float | None:
        if entry is None:
            return None
        what = f"'retry.backoff_factor' of {stage}"
        value = self.number(entry.value, what)
        if value is None:
            return None
        low, high = BACKOFF_FACTOR_RANGE
        if not low < value <= high:
            bounds = f"above {_fmt(low)} and at most {_fmt(high)}"
            message = f"{what} must be {bounds}, not {_fmt(value)}"
            hint = "each wait is the one before times the factor; for fixed waits set backoff_max_s"
            self.report(entry.value, "out-of-range", message, hint)
            return None
        return float(value)

    def check_retry_on(self, entry: _Entry | None, stage: str) -> tuple[str, ...] | None:
        if entry is None:
            return None
        node, what = entry.value, f"'retry.retry_on' of {stage}"
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, what, "a list")
            return None
        if not node.value:
            hint = 'list what to retry ("*" for any error), or set max_attempts: 1'
            self.report(node, "bad-retry-on", f"{what} is empty: nothing would be retried", hint)
            return None
        names: dict[str, yaml.Node] = {}
        for item in node.value:
            if not _is_scalar(item, _STR):
                self.wrong_type(item, f"an entry of {what}", "a string")
                continue
            value: str = item.value
            if not value.strip():
                self.report(item, "bad-retry-on", f"an entry of {what} is empty")
            elif not RETRY_ON_ENTRY.fullmatch(value):
                message = f"{value!r} in {what} is no exception class name or error code"
                self.report(item, "bad-retry-on", message, "e.g. TimeoutError, model_unavailable")
            elif value in names:
                message = f"{value!r} is repeated in {what}"
                self.report(item, "bad-retry-on", message)
            else:
                names[value] = item
        if "*" in names and len(names) > 1:
            message = f"'*' in {what} already retries every error"
            self.report(names["*"], "bad-retry-on", message, "list either '*' or named errors")
            return None
        return tuple(names)

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


def load_configured(settings: Settings) -> dict[str, Workflow]:
    """The built-in workflows and those of WORKFLOWS_DIRS, checked against the registered
    actors (import ``actors.all`` first), their outputs and the known queues."""
    from actors.registry import STAGE_OUTPUTS, STAGE_QUEUES

    return load_workflows(
        [BUILTIN_DIR, *settings.extra_workflow_dirs],
        STAGE_QUEUES,
        settings,
        actor_outputs=STAGE_OUTPUTS,
        extra_queues=settings.extra_queue_names,
    )
