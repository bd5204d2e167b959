"""The checker's part for ``outputs`` and for each stage read on its own (``stages``,
``on_failure``, ``finally``): stages become drafts, which the graph and expression checks
(``workflows.check_graph``) then read together."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from workflows.check_retry import RetryChecks
from workflows.checking import CheckerBase
from workflows.drafts import Draft, Expr, Role
from workflows.expressions import FUNCTION_NAMES, Expression, ExpressionError, compile_expression
from workflows.language import (
    FIELD_NAME,
    MAIN_ONLY_KEYS,
    MAX_CONCURRENCY_RANGE,
    OUTPUT_KEYS,
    QUEUE_NAME,
    STAGE_ID,
    STAGE_KEYS,
    STAGE_REQUIRED,
)
from workflows.spec import OUTPUT_TYPES, OutputSpec
from workflows.yaml_nodes import (
    BOOL,
    FLOAT,
    INT,
    NULL,
    SCALARS,
    STR,
    Entry,
    describe,
    did_you_mean,
    is_scalar,
)

_HYPHENATED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)+")


def _literal_hint(node: yaml.Node) -> str:
    """How to write a YAML value that is not a string as an expression."""
    text: str | None = None
    if is_scalar(node, BOOL):
        text = json.dumps(SCALARS.construct_yaml_bool(node))
    elif is_scalar(node, INT):
        text = str(SCALARS.construct_yaml_int(node))
    elif is_scalar(node, FLOAT):
        value = SCALARS.construct_yaml_float(node)
        text = repr(value) if math.isfinite(value) else None
    elif is_scalar(node, NULL):
        text = "null"
    if text is not None:
        return f'a fixed value is a JMESPath literal inside a YAML string: "`{text}`"'
    return (
        "expressions are strings; put fixed values in 'params', or write a JMESPath literal "
        'inside a YAML string, e.g. "`[1, 2]`"'
    )


def _expression_hint(source: str, exc: ExpressionError) -> str | None:
    if match := re.match(r"unknown function (\w+)\(", exc.message):
        return did_you_mean(match[1], FUNCTION_NAMES) or "functions: " + ", ".join(FUNCTION_NAMES)
    if "'-'" in exc.message and (name := _HYPHENATED.search(source)):
        return f'a name with "-" must be quoted in an expression: "{name[0]}"'
    if re.match(r"unknown token '?[-+*/%]", exc.message):
        return "expressions have no arithmetic; functions: " + ", ".join(FUNCTION_NAMES)
    return None


class OutputChecks(CheckerBase):
    """Reads the workflow ``outputs``."""

    def check_outputs(self, entry: Entry | None) -> dict[str, OutputSpec]:
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
            hint = did_you_mean(value, OUTPUT_TYPES) or "types: " + ", ".join(OUTPUT_TYPES)
            self.report(type_entry.value, "unknown-type", f"unknown output type {value!r}", hint)
        return None


class StageChecks(RetryChecks):
    """Reads each stage into a draft. It extends ``RetryChecks`` because a stage's ``retry``
    and ``timeout_s`` are read with the rest of the stage."""

    def check_stages(self, entry: Entry | None) -> list[Draft] | None:
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

    def check_handlers(self, entry: Entry | None, key: str) -> list[Draft]:
        """The stages of ``on_failure`` or ``finally`` (an empty list is fine)."""
        if entry is None:
            return []
        node = entry.value
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, f"{key!r}", "a list of stages")
            return []
        drafts = [self.check_stage(index, item, key) for index, item in enumerate(node.value, 1)]
        return [draft for draft in drafts if draft is not None]

    def check_unique_ids(self, drafts: Sequence[Draft]) -> None:
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

    def check_stage(self, index: int, node: yaml.Node, handler: str | None) -> Draft | None:
        """Read one stage (a main stage when ``handler`` is None, else a handler of that
        list); the checks that need every stage come later, on the drafts."""
        label = f"stage {index}" if handler is None else f"{handler!r} stage {index}"
        entries = self.sub_mapping(node, label)
        if entries is None:
            return None
        assert isinstance(node, yaml.MappingNode)  # sub_mapping checked it
        id_entry = entries.get("id")
        raw_id: str | None = None
        if id_entry is not None and is_scalar(id_entry.value, STR):
            raw_id = id_entry.value.value
        what = label if raw_id is None else f"stage {raw_id!r}"  # easier to find than a number
        draft = Draft(node, handler, what, raw_id, id_entry.value if id_entry else None)
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

    def check_handler_keys(self, entries: Mapping[str, Entry], what: str, handler: str) -> None:
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
        hint = did_you_mean(actor, sorted(self.actors))
        self.report(node, "unknown-actor", f"no actor named {actor!r} is registered", hint)
        return None

    def check_queue(self, node: yaml.Node) -> str | None:
        """A queue name that some worker consumes: an actor's queue or an extra queue."""
        queue = self.name(node, "the queue name", QUEUE_NAME)
        if queue is None or queue in self.queues:
            return queue
        known = sorted(self.queues)
        hint = did_you_mean(queue, known) or "known queues: " + ", ".join(known)
        message = f"no worker consumes queue {queue!r}: it is no actor's queue nor an extra queue"
        self.report(node, "unknown-queue", message, hint)
        return None

    def check_needs(self, entry: Entry | None, draft: Draft) -> list[tuple[str, yaml.Node]]:
        """The stage ids of ``needs`` as written, with their nodes (checked against the other
        stages later). Sets ``draft.needs_explicit``, and ``draft.needs_broken`` when some of
        it could not be read."""
        if entry is None:
            return []
        draft.needs_explicit = True
        node = entry.value
        what = f"'needs' of {draft.what}"
        if not isinstance(node, yaml.SequenceNode):
            if is_scalar(node, STR):
                hint = f"write needs: [{node.value}]"
            else:
                hint = "write needs: [stage, ...], or needs: [] for a stage that waits for nothing"
            self.report(node, "wrong-type", f"{what} must be a list, not {describe(node)}", hint)
            draft.needs_broken = True
            return []
        needs: list[tuple[str, yaml.Node]] = []
        for item in node.value:
            if is_scalar(item, STR):
                needs.append((item.value, item))
            else:
                self.wrong_type(item, f"an entry of {what}", "a stage id")
                draft.needs_broken = True
        return needs

    def check_max_concurrency(
        self, entry: Entry | None, what: str, has_foreach: bool
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

    def check_stage_input(self, entry: Entry | None, what: str) -> dict[str, Expr]:
        if entry is None:
            return {}
        entries = self.sub_mapping(entry.value, f"'input' of {what}")
        inputs: dict[str, Expr] = {}
        for name, item in (entries or {}).items():
            if not FIELD_NAME.fullmatch(name):
                message = f"input name {name!r} of {what} must match {FIELD_NAME.pattern}"
                self.report(item.key, "bad-name", message)
            expr = self.expression(item, f"input {name!r} of {what}", "input")
            if expr is not None:
                inputs[name] = expr
        return inputs

    def expression(self, entry: Entry | None, what: str, role: Role) -> Expr | None:
        """An expression, compiled; None when absent or not a string. A string that does
        not compile gives an ``Expr`` without ``compiled`` (reported here)."""
        if entry is None:
            return None
        node = entry.value
        if not is_scalar(node, STR):
            message = f"{what} must be an expression (a string), not {describe(node)}"
            self.report(node, "wrong-type", message, _literal_hint(node))
            return None
        compiled: Expression | None = None
        try:
            compiled = compile_expression(node.value)
        except ExpressionError as exc:
            message = f"{what} is not a valid expression: {exc.message}"
            hint = _expression_hint(node.value, exc)
            self.report(node, "bad-expression", message, hint, offset=exc.offset)
        return Expr(node, what, role, compiled)

    def check_params(self, entry: Entry | None, what: str) -> dict[str, Any]:
        if entry is None:
            return {}
        if not isinstance(entry.value, yaml.MappingNode):
            self.wrong_type(entry.value, f"'params' of {what}", "a mapping")
            return {}
        params: dict[str, Any] = self.json_value(entry.value, f"'params' of {what}")
        return params
