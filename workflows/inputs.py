"""Request bodies of a workflow: a msgspec struct per workflow, validation, JSON Schema.

The struct is built from the workflow's ``input`` fields, so the API validates bodies with
msgspec's own fast path and documents them with the same constraints it enforces.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from workflows.spec import AUDIO_REF_MAX_LENGTH, AUDIO_REF_PATTERN, InputField, Workflow

__all__ = ["InputError", "input_json_schema", "input_struct", "validate_input"]

_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "audio": str,  # a reference to audio: upload:<id> or an http(s) URL
}

# msgspec's type names in its error messages, as the API's clients know them.
_JSON_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}

# Built structs by workflow content. A Workflow holds dicts, so it cannot be hashed itself;
# keying on its content also means a reloaded, unchanged workflow reuses its struct.
_STRUCTS: dict[tuple[str, bytes], type[msgspec.Struct]] = {}


class InputError(Exception):
    """A request body broke the workflow's input schema.

    ``field`` is a dotted path (``input`` for the body itself, ``input.duration`` for a
    field); ``message`` says what is wrong in words a client can show
    (``must be at most 30``). ``str()`` joins the two.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field} {message}")


def input_struct(wf: Workflow) -> type[msgspec.Struct]:
    """The msgspec struct of ``wf``'s input body (built once per workflow content).

    Unknown fields are rejected; fields with a default are optional; the constraints,
    defaults and descriptions of the YAML file are on the struct's fields.
    """
    key = (wf.name, msgspec.json.encode([wf.description, wf.input]))
    struct = _STRUCTS.get(key)
    if struct is None:
        struct = _STRUCTS[key] = _build_struct(wf)
    return struct


def validate_input(wf: Workflow, data: object) -> dict[str, Any]:
    """Check a JSON-decoded body against ``wf``'s input; return it with defaults filled in.

    Strict, as for JSON: ``"8"`` is not a number, but ``8`` is (as ``8.0``). Raises
    ``InputError`` naming the first bad field.
    """
    try:
        value = msgspec.convert(data, input_struct(wf), strict=True)
    except msgspec.ValidationError as exc:
        raise _input_error(wf, str(exc)) from None
    return msgspec.structs.asdict(value)


def input_json_schema(wf: Workflow) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12, as msgspec writes it) of ``wf``'s input body, with the
    object inlined rather than behind a ``$ref``."""
    schema = msgspec.json.schema(input_struct(wf))
    name = schema["$ref"].rsplit("/", 1)[-1]
    defs: dict[str, Any] = schema["$defs"]
    body: dict[str, Any] = defs.pop(name)
    if defs:  # only scalar fields today; keep any other definitions reachable
        body["$defs"] = defs
    return body


# --- building the struct ---------------------------------------------------------------------


def _build_struct(wf: Workflow) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, field in wf.input.items():
        annotation = _annotation(field)
        if field.required:
            fields.append((name, annotation))
        else:
            fields.append((name, annotation, _default(field)))
    return msgspec.defstruct(
        _struct_name(wf.name),
        fields,
        kw_only=True,  # lets required and optional fields come in any order
        forbid_unknown_fields=True,
        namespace={"__doc__": wf.description} if wf.description else None,
    )


def _struct_name(workflow: str) -> str:
    """``text2music`` -> ``Text2musicInput`` (the schema's title)."""
    return "".join(part.capitalize() for part in re.split(r"[-_]", workflow)) + "Input"


def _annotation(field: InputField) -> Any:
    base: Any = _PYTHON_TYPES[field.type]
    if field.enum is not None:
        base = Literal[field.enum]  # Literal[("a", "b")] is Literal["a", "b"]
    # The loader sets only the limits that fit the type. Meta's typed overloads do not
    # allow numeric and length keys in one call, so the set ones go in as a mapping.
    constraints: dict[str, Any] = {
        "ge": field.minimum,
        "le": field.maximum,
        "gt": field.exclusive_minimum,
        "lt": field.exclusive_maximum,
        "min_length": field.min_length,
        "max_length": field.max_length,
        "description": field.description,
    }
    if field.type == "audio":
        constraints["pattern"] = AUDIO_REF_PATTERN
        constraints["max_length"] = AUDIO_REF_MAX_LENGTH
    meta = msgspec.Meta(**{key: value for key, value in constraints.items() if value is not None})
    return Annotated[base, meta]


def _default(field: InputField) -> Any:
    # A YAML default of 8 on a number field is an int; a body's 8 comes back as 8.0, so the
    # default does too.
    if field.type == "number" and isinstance(field.default, int):
        return float(field.default)
    return field.default


# --- turning msgspec errors into InputError --------------------------------------------------

_AT = re.compile(r"\s+-\s+at\s+`\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]+)`")
_WRONG_TYPE = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`")
_LENGTH = re.compile(r"Expected `[^`]+` of length (?P<op>[<>]=?) (?P<n>\d+)")
_BOUND = re.compile(r"Expected `[^`]+` (?P<op>[<>]=?) (?P<n>-?[\d.e+-]+)")
_ENUM = re.compile(r"Invalid enum value")
_PATTERN = re.compile(r"Expected `str` matching regex")

_BOUND_WORDS = {">=": "at least", ">": "greater than", "<=": "at most", "<": "less than"}


def _input_error(wf: Workflow, text: str) -> InputError:
    """An InputError for msgspec's message ``text`` (``Expected ... - at `$.duration```)."""
    at = _AT.search(text)
    path = at.group("path") if at else ""
    reason = text[: at.start()] if at else text
    field = "input" + path
    if match := _MISSING.match(reason):
        return InputError(f"{field}.{match['name']}", "is required")
    if match := _UNKNOWN.match(reason):
        return InputError(f"{field}.{match['name']}", "is not allowed")
    return InputError(field, _reword(wf, path, reason))


def _reword(wf: Workflow, path: str, reason: str) -> str:
    if match := _WRONG_TYPE.match(reason):
        want, got = (_JSON_NAMES.get(match[k], match[k]) for k in ("want", "got"))
        return f"must be {want}, not {got}"
    if match := _LENGTH.match(reason):
        size = int(match["n"])
        if match["op"] == ">=" and size == 1:
            return "must not be empty"
        unit = "character" if size == 1 else "characters"
        return f"must be {_BOUND_WORDS[match['op']]} {size} {unit} long"
    if match := _BOUND.match(reason):
        return f"must be {_BOUND_WORDS[match['op']]} {_number(match['n'])}"
    if _PATTERN.match(reason):
        return "must be an upload id (upload:<id>, from POST /v1/uploads) or an http(s) URL"
    if _ENUM.match(reason):
        field = wf.input.get(path.removeprefix("."))
        if field is not None and field.enum is not None:
            return "must be one of " + ", ".join(repr(member) for member in field.enum)
    return reason[:1].lower() + reason[1:]


def _number(text: str) -> str:
    """msgspec writes float bounds as ``30.0``; clients read ``30``."""
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else text
