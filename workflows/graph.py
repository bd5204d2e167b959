"""The stage graph of a workflow: cycles and ancestors (used by the checker), levels, and two
views for people, a Mermaid flowchart (:func:`mermaid`) and a plain-text outline
(:func:`outline`).

Edges run from a stage to the stages that need it (run order). ``deps`` arguments map each
stage id to the ids it needs; names that are not keys of ``deps`` are ignored, so a checker
can pass a graph with dangling needs.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from workflows.spec import Stage, Workflow

__all__ = ["ancestors", "cycles", "levels", "mermaid", "outline"]

Deps = Mapping[str, Sequence[str]]


# --- algorithms ------------------------------------------------------------------------------


def _dependents(deps: Deps) -> dict[str, list[str]]:
    """Each stage's direct dependents, in ``deps`` order (self-edges left out)."""
    out: dict[str, list[str]] = {name: [] for name in deps}
    for name, needs in deps.items():
        for need in dict.fromkeys(needs):
            if need in out and need != name:
                out[need].append(name)
    return out


def _reach(start: str, edges: Mapping[str, Sequence[str]]) -> set[str]:
    """Every name reachable from ``start`` in one or more steps."""
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        name = todo.pop()
        if name in seen or name not in edges:
            continue
        seen.add(name)
        todo.extend(edges[name])
    return seen


def ancestors(deps: Deps) -> dict[str, frozenset[str]]:
    """Every stage's upstream stages: those it needs, directly or through others. A stage in
    a cycle is its own ancestor; self-edges are ignored."""
    edges = {name: [n for n in needs if n != name] for name, needs in deps.items()}
    return {name: frozenset(_reach(name, edges)) for name in deps}


def cycles(deps: Deps) -> list[tuple[str, ...]]:
    """One cycle per group of stages that wait on each other, in run order and closed:
    ``("a", "b", "a")`` means a runs before b and b before a. Each path starts and ends at
    the group's first stage in ``deps`` order and is a shortest cycle through it; groups come
    in that order too. Self-edges (a stage that needs itself) are not cycles here."""
    forward = _dependents(deps)
    upstream = ancestors(deps)
    found: list[tuple[str, ...]] = []
    done: set[str] = set()
    for start in deps:
        if start in done:
            continue
        downstream = _reach(start, forward)
        if start not in downstream:
            continue
        group = (downstream & upstream[start]) | {start}
        done |= group
        found.append(_shortest_cycle(start, forward, group))
    return found


def _shortest_cycle(
    start: str, forward: Mapping[str, Sequence[str]], group: set[str]
) -> tuple[str, ...]:
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        name = queue.popleft()
        for nxt in forward[name]:
            if nxt not in group:
                continue
            if nxt == start:
                path = [start, name]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return tuple(reversed(path))
            if nxt not in previous:
                previous[nxt] = name
                queue.append(nxt)
    raise ValueError(f"{start!r} is in no cycle")  # the caller checked it is


def levels(workflow: Workflow) -> list[tuple[Stage, ...]]:
    """The main stages by level: level 0 holds the roots, and a stage sits one level below
    the deepest stage it needs. Stages on one level never need each other, so they may run at
    the same time. File order within a level. ValueError when the needs form a cycle (a
    workflow from the loader never does)."""
    by_id = {stage.id: stage for stage in workflow.stages}
    depth: dict[str, int] = {}

    def level(stage: Stage, path: tuple[str, ...]) -> int:
        if stage.id in path:
            raise ValueError("the needs form a cycle: " + " -> ".join((*path, stage.id)))
        if stage.id not in depth:
            needed = [by_id[n] for n in stage.needs if n in by_id]
            path = (*path, stage.id)
            depth[stage.id] = 1 + max((level(n, path) for n in needed), default=-1)
        return depth[stage.id]

    rows: list[list[Stage]] = []
    for stage in workflow.stages:
        at = level(stage, ())
        rows.extend([] for _ in range(at + 1 - len(rows)))
        rows[at].append(stage)
    return [tuple(row) for row in rows]


# --- views -----------------------------------------------------------------------------------

_MERMAID_WORDS = frozenset(
    {"end", "graph", "flowchart", "subgraph", "style", "class", "classdef", "click",
     "linkstyle", "direction", "default", "call", "href"}
)  # fmt: skip
_HANDLER_LABELS = (("on_failure", "on failure"), ("finally", "finally"))


def _queue(stage: Stage, queues: Mapping[str, str]) -> str:
    return queues.get(stage.id) or stage.queue or "?"


def _foreach_mark(stage: Stage) -> str:
    if stage.max_concurrency is None:
        return " ×each"
    return f" ×each (max {stage.max_concurrency})"


def _handlers(workflow: Workflow) -> list[tuple[str, Stage]]:
    return [
        *(("on failure", stage) for stage in workflow.on_failure),
        *(("finally", stage) for stage in workflow.finally_),
    ]


def _mermaid_ids(stages: Iterable[Stage]) -> dict[str, str]:
    """Mermaid node ids: the stage id with ``-`` as ``_``, changed further when that is a
    Mermaid keyword or already taken."""
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for stage in stages:
        base = stage.id.replace("-", "_")
        if base in _MERMAID_WORDS:
            base += "_"
        node, n = base, 1
        while node in taken:
            n += 1
            node = f"{base}_{n}"
        taken.add(node)
        ids[stage.id] = node
    return ids


def _mermaid_text(text: str) -> str:
    """Text safe inside a double-quoted Mermaid label."""
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text


def _mermaid_node(node: str, stage: Stage, queue: str, extra: str | None = None) -> str:
    title = stage.id + (_foreach_mark(stage) if stage.foreach else "")
    lines = [title, f"{stage.actor} · {queue}"]
    if stage.foreach:
        lines.append(f"foreach: {stage.foreach}")
    if stage.when:
        lines.append(f"when: {stage.when}")
    if extra:
        lines.append(extra)
    label = "<br/>".join(_mermaid_text(line) for line in lines)
    opening, closing = ("[[", "]]") if stage.foreach else ("[", "]")
    return f'{node}{opening}"{label}"{closing}'


def mermaid(workflow: Workflow, queues: Mapping[str, str]) -> str:
    """A Mermaid ``flowchart TD`` of ``workflow`` (a checked one), ending with a newline.

    ``queues`` maps stage ids to the queue each stage really uses (a missing id falls back to
    the stage's own ``queue``, then ``?``). Each node shows the stage id, actor and queue;
    ``foreach`` stages are subroutine boxes (``[[...]]``) whose title ends in a multiplication
    sign and ``each`` (then ``(max N)`` for ``max_concurrency``) and show the expression;
    ``when`` stages show their condition and are reached by dashed edges labelled ``when``.
    Handler stages sit in a subgraph ``on failure / finally``, chained in the order they run.
    Labels are escaped with Mermaid's entity codes (``#quot;``, ``#lt;``...).
    """
    ids = _mermaid_ids(workflow.all_stages)
    lines = ["flowchart TD"]
    for stage in workflow.stages:
        lines.append("    " + _mermaid_node(ids[stage.id], stage, _queue(stage, queues)))
    for stage in workflow.stages:
        arrow = " -. when .-> " if stage.when else " --> "
        lines.extend(f"    {ids[need]}{arrow}{ids[stage.id]}" for need in stage.needs)
    handlers = _handlers(workflow)
    if handlers:
        lines.append('    subgraph Handlers ["on failure / finally"]')
        for kind, stage in handlers:
            node = _mermaid_node(ids[stage.id], stage, _queue(stage, queues), kind)
            lines.append("        " + node)
        chain = [ids[stage.id] for _, stage in handlers]
        lines.extend(f"        {a} --> {b}" for a, b in itertools.pairwise(chain))
        lines.append("    end")
    return "\n".join(lines) + "\n"


def _notes(stage: Stage) -> str:
    notes: list[str] = []
    if stage.needs:
        notes.append("after " + ", ".join(stage.needs))
    if stage.foreach:
        each = f"foreach {stage.foreach}"
        if stage.max_concurrency is not None:
            each += f", max {stage.max_concurrency}"
        notes.append(each)
    if stage.when:
        notes.append(f"when {stage.when}")
    return "; ".join(notes)


def outline(workflow: Workflow, queues: Mapping[str, str]) -> str:
    """A plain-text outline of ``workflow`` (a checked one), ending with a newline.

    One heading line, then one row per main stage, grouped by level (see :func:`levels`;
    the level number starts the first row of each group, and stages on one level may run at
    the same time): id, actor, queue (``queues`` as for :func:`mermaid`), then what it runs
    after, its ``foreach`` and its ``when``. Handlers follow under ``on failure`` and
    ``finally``. Columns are aligned; lines carry no trailing spaces.
    """
    grouped = levels(workflow)
    rows: list[tuple[str, Stage]] = []
    for number, row in enumerate(grouped, 1):
        rows.extend((str(number) if i == 0 else "", stage) for i, stage in enumerate(row))
    handlers = _handlers(workflow)
    every = [stage for _, stage in rows] + [stage for _, stage in handlers]
    width_level = max(len(str(len(grouped))), 1)
    width_id = max(len(stage.id) for stage in every)
    width_actor = max(len(stage.actor) for stage in every)
    width_queue = max(len(_queue(stage, queues)) for stage in every)

    def line(level: str, stage: Stage) -> str:
        text = (
            f"{level:<{width_level}}  {stage.id:<{width_id}}  {stage.actor:<{width_actor}}  "
            f"{_queue(stage, queues):<{width_queue}}  {_notes(stage)}"
        )
        return text.rstrip()

    count = len(workflow.stages)
    plural = "stage" if count == 1 else "stages"
    depth = len(grouped)
    lines = [
        f"{workflow.name} v{workflow.version}: {count} {plural} on {depth} "
        f"level{'' if depth == 1 else 's'} (stages on one level may run at the same time)"
    ]
    lines.extend(line(level, stage) for level, stage in rows)
    for key, title in _HANDLER_LABELS:
        stages = workflow.on_failure if key == "on_failure" else workflow.finally_
        if stages:
            lines.append(title)
            lines.extend(line("", stage) for stage in stages)
    return "\n".join(lines) + "\n"
