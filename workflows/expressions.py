"""JMESPath expressions of the workflow language: ``when``, ``foreach`` and ``input`` values.

An expression reads one context, built by the runtime for each evaluation::

    {"input": <the task's input>, "stages": {<stage id>: <its output>, ...},
     "item": <the foreach item>, "index": <its position>}

``item`` and ``index`` are there only while one item of a ``foreach`` stage runs (``when`` and
``foreach`` themselves are evaluated once per stage, before any item). A stage that was
skipped (``when`` false) has output null. Literal values are JMESPath literals: ```3```,
``'text'``, ```{"a": 1}```. Truthiness is JMESPath's (:func:`truthy`): ``false``, ``null``
and empty strings, lists and objects are false; every number, 0 included, is true.

Besides JMESPath's own functions there are two:

* ``range(n)``: ``[0, 1, ..., n-1]`` for a whole number ``0 <= n <= 1000`` (fan out n times);
* ``seed(base, index)``: a deterministic int in ``[0, 2**31)`` from two whole numbers, for
  per-item seeds that stay the same when the task runs again.

:func:`compile_expression` catches every mistake that can be found before run time (syntax,
unknown functions, wrong argument counts); :func:`evaluate` raises :class:`ExpressionError`
for what only data can reveal (``sum`` of strings, ``range(-1)``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jmespath
from jmespath import exceptions as jexc
from jmespath import functions as jfunctions
from jmespath.parser import ParsedResult

__all__ = [
    "CONTEXT_KEYS",
    "FUNCTION_NAMES",
    "MAX_RANGE",
    "Expression",
    "ExpressionError",
    "compile_expression",
    "evaluate",
    "references",
    "truthy",
]

#: The top-level keys of an expression's context.
CONTEXT_KEYS = ("input", "stages", "item", "index")
#: The largest ``n`` of ``range(n)``.
MAX_RANGE = 1000

#: A field path read from the root of the context: ``("stages", "music", "media")``.
Path = tuple[str, ...]


class ExpressionError(Exception):
    """An expression that cannot be compiled or evaluated.

    ``message`` says what is wrong (no source, no position); ``offset`` is the 0-based
    character position of the problem inside the expression's source when it is known (parse
    errors, unknown functions), else None. ``str()`` is the message.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.message = message
        self.offset = offset
        super().__init__(message)


class _Functions(jfunctions.Functions):
    """JMESPath's functions plus ``range`` and ``seed``."""

    @jfunctions.signature({"types": ["number"]})
    def _func_range(self, n: float) -> list[int]:
        count = _whole(n, "range")
        if not 0 <= count <= MAX_RANGE:
            raise ExpressionError(f"range() takes 0 to {MAX_RANGE}, not {count}")
        return list(range(count))

    @jfunctions.signature({"types": ["number"]}, {"types": ["number"]})
    def _func_seed(self, base: float, index: float) -> int:
        return (_whole(base, "seed") * 1_000_003 + _whole(index, "seed")) % 2**31


def _whole(value: float, function: str) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ExpressionError(f"{function}() takes whole numbers, not {value}")
        return int(value)
    return value


_OPTIONS = jmespath.Options(custom_functions=_Functions())
#: name -> (fixed argument count, variadic)
_SIGNATURES: dict[str, tuple[int, bool]] = {
    name: (len(entry["signature"]), any(arg.get("variadic") for arg in entry["signature"]))
    for name, entry in _Functions.FUNCTION_TABLE.items()
}
#: Every function an expression may call.
FUNCTION_NAMES = tuple(sorted(_SIGNATURES))


@dataclass(frozen=True, eq=False)
class Expression:
    """A compiled expression. ``source`` is its text; ``ast`` is jmespath's parsed tree
    (``{"type", "value", "children"}`` dicts), read-only."""

    source: str
    ast: Mapping[str, Any] = field(repr=False)
    _parsed: ParsedResult = field(repr=False)


def compile_expression(source: str) -> Expression:
    """Compile ``source`` once (results are cached by source).

    Raises :class:`ExpressionError` for a syntax error, an empty expression, a function that
    does not exist or a call with the wrong number of arguments; ``offset`` points at the
    problem when jmespath (or the function's name) gives a position.
    """
    return _compile(source)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> Expression:
    try:
        parsed = jmespath.compile(source)
    except jexc.JMESPathError as exc:
        raise _parse_error(exc) from None
    ast: Mapping[str, Any] = parsed.parsed
    _check_calls(source, ast)
    return Expression(source=source, ast=ast, _parsed=parsed)


def evaluate(expr: Expression | str, context: Mapping[str, Any]) -> Any:
    """The value of ``expr`` (compiled first when it is a string) against ``context``.

    Raises :class:`ExpressionError` for every failure, compile errors included: a function
    given the wrong type, ``range`` out of bounds.
    """
    compiled = compile_expression(expr) if isinstance(expr, str) else expr
    try:
        return compiled._parsed.search(context, options=_OPTIONS)
    except ExpressionError:
        raise
    except jexc.JMESPathError as exc:
        raise ExpressionError(" ".join(str(exc).split())) from None


def truthy(value: Any) -> bool:
    """JMESPath truthiness (what ``when`` uses): false, null, "", [] and {} are false;
    everything else is true, including 0."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return bool(value)
    return True


def references(expr: Expression) -> set[Path]:
    """The field paths ``expr`` reads from the root of the context.

    ``stages.music.media`` gives ``("stages", "music", "media")``; a path stops where the
    value stops being a plain field of the root: at an index, a projection, a filter or a
    function call (``stages.each[*].url`` gives ``("stages", "each")``, ``length(input.tags)``
    gives ``("input", "tags")``). Fields read inside projections, filters and ``&`` arguments
    are relative to list items, so they are not root paths. Only maximal paths are returned:
    when ``("input", "a")`` is there, ``("input",)`` is not. Reading the whole context (``@``)
    gives no path.
    """
    found: set[Path] = set()
    _use(expr.ast, (), found)
    return {p for p in found if p and not any(len(q) > len(p) and q[: len(p)] == p for q in found)}


# --- walking the tree ------------------------------------------------------------------------


def _children(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    # A slice's children are plain ints (or None), not nodes.
    return (child for child in node.get("children", ()) if isinstance(child, Mapping))


def _use(node: Mapping[str, Any], current: Path | None, found: set[Path]) -> None:
    """Walk a node whose value is consumed where it stands (not extended by a parent)."""
    path = _visit(node, current, found)
    if path is not None:
        found.add(path)


def _visit(node: Mapping[str, Any], current: Path | None, found: set[Path]) -> Path | None:
    """Record the root paths read under ``node`` and return the root path ``node`` itself
    evaluates to, if it is one. ``current`` is the root path of the current node (``()`` at
    the top), or None when the current node is something else (a list item, a result)."""
    kind = node["type"]
    children = list(_children(node))
    if kind == "field":
        return None if current is None else (*current, str(node["value"]))
    if kind in ("current", "identity"):
        return current
    if kind == "subexpression":
        path = current
        for child in children:
            path = _visit(child, path, found)
        return path
    if kind == "pipe":
        left = _visit(children[0], current, found)
        if left is not None:
            found.add(left)
        return _visit(children[1], left, found)
    if kind in ("projection", "value_projection", "filter_projection", "index_expression"):
        # The left side is read from the current node; the rest runs on its items.
        _use(children[0], current, found)
        for child in children[1:]:
            _use(child, None, found)
        return None
    if kind == "expref":  # &expr runs on each item of the function's list
        for child in children:
            _use(child, None, found)
        return None
    # Functions, comparisons, and/or/not, flatten, multi-selects: every child is read from
    # the current node and consumed there.
    for child in children:
        if child["type"] == "key_val_pair":
            for value in _children(child):
                _use(value, current, found)
        else:
            _use(child, current, found)
    return None


def _calls(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if node["type"] == "function_expression":
        yield node
    for child in _children(node):
        yield from _calls(child)


def _check_calls(source: str, ast: Mapping[str, Any]) -> None:
    """Unknown functions and wrong argument counts, which jmespath finds only at run time."""
    for call in _calls(ast):
        name = str(call["value"])
        offset = _call_offset(source, name)
        signature = _SIGNATURES.get(name)
        if signature is None:
            raise ExpressionError(f"unknown function {name}()", offset)
        count, variadic = signature
        given = len(call["children"])
        if variadic and given < count:
            raise ExpressionError(f"{name}() takes at least {_args(count)}, not {given}", offset)
        if not variadic and given != count:
            raise ExpressionError(f"{name}() takes {_args(count)}, not {given}", offset)


def _args(count: int) -> str:
    return f"{count} argument" + ("" if count == 1 else "s")


def _call_offset(source: str, name: str) -> int | None:
    match = re.search(rf"(?<![\w\"']){re.escape(name)}\s*\(", source)
    return match.start() if match else None


# --- parse errors ----------------------------------------------------------------------------

_TOKEN_WORDS = {
    "quoted_identifier": "a name",
    "unquoted_identifier": "a name",
    "lbracket": "'['",
    "rbracket": "']'",
    "lbrace": "'{'",
    "rbrace": "'}'",
    "lparen": "'('",
    "rparen": "')'",
    "comma": "','",
    "colon": "':'",
    "dot": "'.'",
    "eof": "the end of the expression",
}
_EXPECTING = re.compile(r"Expecting: \[(?P<tokens>[^\]]*)\]")


def _parse_error(exc: jexc.JMESPathError) -> ExpressionError:
    if isinstance(exc, jexc.EmptyExpressionError):
        return ExpressionError("the expression is empty", 0)
    if isinstance(exc, jexc.LexerError):
        message = exc.message[:1].lower() + exc.message[1:]
        return ExpressionError(message, exc.lexer_position)
    if isinstance(exc, jexc.IncompleteExpressionError):
        return ExpressionError("the expression is incomplete", exc.lex_position)
    if isinstance(exc, jexc.ParseError):
        kind = str(exc.token_type).lower()
        if kind == "eof":
            found = "the expression ends too early"
        elif kind == "number":
            value = exc.token_value
            found = f"unexpected number {value}: write numbers as literals, `{value}`"
        else:
            found = f"unexpected {str(exc.token_value)!r}"
        if match := _EXPECTING.match(exc.msg):
            tokens = [t.strip(" '\"") for t in match["tokens"].split(",")]
            words = list(dict.fromkeys(_TOKEN_WORDS.get(t, t) for t in tokens))
            found += ", expected " + " or ".join(words)
        return ExpressionError(found, exc.lex_position)
    return ExpressionError(" ".join(str(exc).split()))
