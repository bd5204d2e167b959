"""The part of the workflow checker every section shares: what it knows besides the file,
the diagnostics found so far, reporting, and reading generic YAML shapes.

The checker is one class, ``workflows.checker.Checker``, composed of one mixin per part of
the language (``check_input``, ``check_stages``, ``check_graph``, ``check_retry``); each
mixin extends ``CheckerBase`` so its methods see the shared state and each other's types.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.settings import Settings
from workflows.diagnostics import Diagnostic, Severity, has_errors
from workflows.drafts import Draft
from workflows.language import KEY_ALIASES
from workflows.yaml_nodes import (
    BOOL,
    FLOAT,
    INT,
    NULL,
    SCALARS,
    STR,
    Entry,
    Number,
    describe,
    did_you_mean,
    is_scalar,
    position,
    scalar_position,
)


@dataclass(frozen=True)
class Context:
    """What the checks know besides the file."""

    actors: Mapping[str, str]
    settings: Settings
    broker_limit: float
    actor_outputs: Mapping[str, tuple[str, ...]] | None
    queues: frozenset[str]


class CheckerBase:
    """The state of one file's check and the methods every section uses.

    The state that one section sets and another reads (``input_names``, ``main_ids``...) is
    declared here, so every mixin, and mypy, sees the same attributes.
    """

    def __init__(self, path: Path, context: Context) -> None:
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
        self.main_ids: dict[str, Draft] = {}
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
            line, column = scalar_position(node, offset)
        else:
            line, column = position(node)
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
        self.report(node, "wrong-type", f"{what} must be {expected}, not {describe(node)}")

    def mark(self) -> int:
        return len(self.diagnostics)

    def failed_since(self, mark: int) -> bool:
        return has_errors(self.diagnostics[mark:])

    # --- generic shapes --------------------------------------------------------------------

    def mapping(self, node: yaml.MappingNode, what: str) -> dict[str, Entry]:
        """The entries of a mapping node by key. Reports keys that are not strings and
        repeated keys (the first one is kept)."""
        entries: dict[str, Entry] = {}
        for key, value in node.value:
            if not is_scalar(key, STR):
                self.wrong_type(key, f"a key in {what}", "a string")
            elif key.value in entries:
                first = entries[key.value].key.start_mark.line + 1
                message = f"{key.value!r} is repeated in {what} (first on line {first})"
                self.report(key, "duplicate-key", message)
            else:
                entries[key.value] = Entry(key, value)
        return entries

    def sub_mapping(self, node: yaml.Node, what: str) -> dict[str, Entry] | None:
        """``mapping`` for a value that must be a mapping; None (reported) when it is not."""
        if not isinstance(node, yaml.MappingNode):
            self.wrong_type(node, what, "a mapping")
            return None
        return self.mapping(node, what)

    def check_keys(
        self,
        entries: Mapping[str, Entry],
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
                hint = did_you_mean(key, suggest) or "valid keys: " + ", ".join(suggest)
            self.report(entry.key, "unknown-key", f"unknown key {key!r} in {what}", hint)
        for key in required:
            if key not in entries:
                self.report(node, "missing-key", f"{what} is missing the required key {key!r}")

    def string(self, node: yaml.Node, what: str) -> str | None:
        if not is_scalar(node, STR):
            self.wrong_type(node, what, "a string")
            return None
        value: str = node.value
        return value

    def optional_string(self, entry: Entry | None, what: str) -> str | None:
        return None if entry is None else self.string(entry.value, what)

    def name(self, node: yaml.Node, what: str, pattern: re.Pattern[str]) -> str | None:
        """A string that must match ``pattern`` (else ``bad-name``)."""
        value = self.string(node, what)
        if value is not None and not pattern.fullmatch(value):
            self.report(node, "bad-name", f"{what} {value!r} must match {pattern.pattern}")
            return None
        return value

    def integer(self, node: yaml.Node, what: str) -> int | None:
        if not is_scalar(node, INT):
            self.wrong_type(node, what, "an integer")
            return None
        return SCALARS.construct_yaml_int(node)

    def number(self, node: yaml.Node, what: str) -> Number | None:
        """An int or a finite float."""
        if is_scalar(node, INT):
            return SCALARS.construct_yaml_int(node)
        if is_scalar(node, FLOAT):
            value = SCALARS.construct_yaml_float(node)
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
        if is_scalar(node, NULL):
            return None
        if is_scalar(node, STR):
            return node.value
        if is_scalar(node, BOOL):
            return SCALARS.construct_yaml_bool(node)
        if is_scalar(node, INT, FLOAT):
            return self.number(node, what)
        self.wrong_type(node, what, "JSON data (a string, number, boolean, list or mapping)")
        return None
