"""The checker's parts that need every stage: the stage graph (``needs``, cycles, upstream
stages) and what each expression reads (inputs, upstream stages, their actors' outputs)."""

from __future__ import annotations

import json
import re
from typing import Protocol

import yaml

from workflows.checking import CheckerBase
from workflows.drafts import Draft, Expr, Stages
from workflows.expressions import CONTEXT_KEYS, references
from workflows.graph import ancestors, cycles
from workflows.yaml_nodes import did_you_mean


class _Report(Protocol):
    """Reports a problem of one path read by an expression, at the path's ``depth``-th name."""

    def __call__(self, code: str, depth: int, message: str, hint: str | None = None) -> None: ...


_FOREACH_HINT = "add foreach: <list expression> to run the stage once per item"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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


def _context_hint(root: str, source: str) -> str:
    near = did_you_mean(root, CONTEXT_KEYS)
    if near is not None:
        return near
    if source.strip() == root:
        return (
            f"for the text {root!r}, write a JMESPath string inside a YAML string: "
            f"\"'{root}'\"; expressions read input.<field>, stages.<id>, item and index"
        )
    return "expressions read input.<field>, stages.<id>, item and index"


class GraphChecks(CheckerBase):
    """Checks what needs every stage at once: the graph first (it sets ``main_ids``,
    ``upstream`` and the rest), then what the expressions read."""

    # --- the stage graph -------------------------------------------------------------------

    def check_graph(self, stages: Stages) -> None:
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
        previous: Draft | None = None
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

    def resolve_needs(self, draft: Draft, previous: Draft | None) -> tuple[str, ...]:
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

    def report_dangling(self, draft: Draft, name: str, node: yaml.Node) -> None:
        hint: str | None
        if name in self.handler_ids:
            message = f"{draft.what} needs {name!r}, which is a handler (on_failure/finally)"
            hint = "handlers run after the task has ended; no stage can wait for one"
        else:
            message = f"{draft.what} needs {name!r}, but there is no stage {name!r}"
            ids = list(self.main_ids)
            hint = did_you_mean(name, ids)
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

    def check_expressions(self, stages: Stages) -> None:
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
        draft: Draft,
        expr: Expr,
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
        hint = did_you_mean(name, names, prefix="input.")
        if hint is None:
            hint = "input fields: " + ", ".join(names) if names else "the workflow has no input"
        report("unknown-reference", 1, message, hint)

    def check_stage_reference(
        self,
        draft: Draft,
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
            report("unknown-reference", 1, message, did_you_mean(name, list(self.main_ids)))
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

    def check_output_reference(self, target: Draft, key: str, what: str, report: _Report) -> None:
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
        hint = did_you_mean(key, known, prefix=f"{ref}.")
        if hint is None:
            hint = "it returns " + ", ".join(known) if known else "it returns no fields"
        report("unknown-output", 2, message, hint)
