"""YAML node helpers of the checker: positions, scalar tags and values, and the wording of
"must be X, not Y" and "did you mean" messages."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import NamedTuple, TypeGuard

import yaml
from yaml.constructor import SafeConstructor

_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
# Used on single scalar nodes only (it understands 0x1f, 1_000, .inf, yes/no...); building a
# scalar keeps no state, so one instance is shared.
SCALARS = SafeConstructor()

Number = int | float


class Entry(NamedTuple):
    """One ``key: value`` pair of a mapping, both as nodes (for positions)."""

    key: yaml.Node
    value: yaml.Node


def position(node: yaml.Node | None) -> tuple[int, int]:
    """1-based line and column of a node; the top of the file when there is no node."""
    mark = node.start_mark if node is not None else None
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def scalar_position(node: yaml.ScalarNode, offset: int) -> tuple[int, int]:
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


def describe(node: yaml.Node) -> str:
    """What a node is, for "must be X, not Y" messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    names = {
        STR: "a string",
        INT: "an integer",
        FLOAT: "a number",
        BOOL: "a boolean",
        NULL: "empty",
        _TAG + "timestamp": "a date",
    }
    return names.get(node.tag, f"a value tagged {node.tag}")


def is_scalar(node: yaml.Node, *tags: str) -> TypeGuard[yaml.ScalarNode]:
    """A scalar node whose resolved tag is one of ``tags``."""
    return isinstance(node, yaml.ScalarNode) and node.tag in tags


def did_you_mean(word: str, choices: Sequence[str], prefix: str = "") -> str | None:
    """``did you mean 'stages'?`` for the nearest choice, or None when none is near."""
    matches = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{prefix}{matches[0]}'?" if matches else None


def fmt(value: Number) -> str:
    """Numbers as a person writes them: 30.0 -> "30", 0.5 -> "0.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
