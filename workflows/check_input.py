"""The checker's part for the workflow ``input``: field types, limits (numbers or
``$SETTING`` references), enums and defaults."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import yaml

from core.settings import Settings
from workflows.checking import CheckerBase
from workflows.language import FIELD_KEYS, FIELD_NAME, LENGTH_LIMITS, NUMBER_LIMITS, SETTING_REF
from workflows.limits import CONSTANTS
from workflows.spec import (
    AUDIO_REF_MAX_LENGTH,
    AUDIO_REF_PATTERN,
    INPUT_TYPES,
    InputField,
    InputType,
    Scalar,
)
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
    fmt,
    is_scalar,
)


@dataclass(frozen=True)
class _Limit:
    """A resolved limit of an input field, with the node and text it came from."""

    value: Number
    node: yaml.Node
    text: str  # "30" or "30 ($MAX_DURATION)", for messages


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
    if ftype == "string" and is_scalar(node, STR):
        text: str = node.value
        return text
    if ftype == "audio" and is_scalar(node, STR):
        ref: str = node.value
        fits = len(ref) <= AUDIO_REF_MAX_LENGTH and re.fullmatch(AUDIO_REF_PATTERN, ref)
        return ref if fits else None
    if ftype == "boolean" and is_scalar(node, BOOL):
        return SCALARS.construct_yaml_bool(node)
    if ftype in ("integer", "number") and is_scalar(node, INT):
        return SCALARS.construct_yaml_int(node)
    if ftype == "number" and is_scalar(node, FLOAT):
        value = SCALARS.construct_yaml_float(node)
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


class InputChecks(CheckerBase):
    """Reads the workflow ``input``: its fields and their limits, enums and defaults."""

    def check_inputs(self, entry: Entry | None) -> dict[str, InputField]:
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

    def check_input_type(self, entry: Entry | None) -> InputType | None:
        if entry is None:
            return None
        value = self.string(entry.value, "an input 'type'")
        if value is None:
            return None
        for known in INPUT_TYPES:
            if value == known:
                return known
        hint = did_you_mean(value, INPUT_TYPES) or "types: " + ", ".join(INPUT_TYPES)
        self.report(entry.value, "unknown-type", f"unknown input type {value!r}", hint)
        return None

    def check_limits(
        self, entries: Mapping[str, Entry], ftype: InputType, what: str
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
        if is_scalar(node, STR) and node.value.startswith("$"):
            value = self.resolve_setting(node)
            text = f"{fmt(value)} ({node.value})" if value is not None else ""
        elif is_scalar(node, INT, FLOAT):
            value = self.number(node, what)
            text = fmt(value) if value is not None else ""
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
            hint = did_you_mean(ref[1:].upper(), [*numeric, *CONSTANTS], prefix="$")
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
        entries: Mapping[str, Entry],
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
        tag = STR if ftype == "string" else INT
        members: list[str | int] = []
        for item in items:
            if not is_scalar(item, tag):
                message = f"enum members of {what} must be {ftype}s, not {describe(item)}"
                self.report(item, "bad-enum", message)
                continue
            member = item.value if tag == STR else SCALARS.construct_yaml_int(item)
            if member in members:
                self.report(item, "bad-enum", f"{member!r} is repeated in the enum of {what}")
                continue
            members.append(member)
        return members

    def check_conflicts(
        self, entries: Mapping[str, Entry], limits: dict[str, _Limit], what: str
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
        entry: Entry | None,
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
            message = f"the default of {what} must be {article} {ftype}, not {describe(node)}"
            if ftype == "audio" and is_scalar(node, STR):
                message = (
                    f"the default of {what} must be an upload id (upload:<id>) or an http(s) "
                    f"URL of at most {AUDIO_REF_MAX_LENGTH} characters"
                )
            hint = "leave 'default' out to make the field required"
            self.report(node, "bad-default", message, hint if is_scalar(node, NULL) else None)
            return None
        clamped = _clamp_to_setting(value, limits)
        if clamped is not None:
            limit, new = clamped
            message = (
                f"the default of {what} ({value!r}) is beyond the limit {limit.text}: "
                f"it becomes {fmt(new)}"
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
