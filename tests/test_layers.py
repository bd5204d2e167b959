"""The packages' layers: which project package may import which, read from the source.

Every ``.py`` file of the layered packages is parsed (``ast``, nothing is imported) and each of
its imports, at module level or inside a function, is checked against :data:`ALLOWED`. The
rule is one-way, so the packages form layers:

    core  <-  db, workflows, audio  <-  tasks  <-  actors, api  <-  aimarket

``core`` imports no project package; ``api`` never imports the stage actors or the composition
roots (``aimarket``), which wire everything together. It may use the light modules of
``audio`` (WAV files, decoding an upload), and :func:`test_the_api_never_loads_torch` checks
that nothing it reaches, however indirectly, imports torch. ``tests``, ``bench``,
``alembic`` and ``examples`` are outside the rule.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Each layered package and the project packages it may import (itself always).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "db": frozenset({"core"}),
    "workflows": frozenset({"core"}),
    "audio": frozenset({"core"}),
    "tasks": frozenset({"core", "db", "workflows"}),
    "actors": frozenset({"core", "db", "workflows", "audio", "tasks"}),
    "api": frozenset({"core", "db", "workflows", "audio", "tasks"}),
    "aimarket": frozenset({"core", "db", "workflows", "audio", "tasks", "actors", "api"}),
}
#: Project packages outside the rule: no layered package may import them. (``alembic/`` and
#: ``examples/`` are outside it too, but are no packages: ``import alembic`` is the library.)
UNLAYERED = frozenset({"tests", "bench"})
PROJECT = frozenset(ALLOWED) | UNLAYERED

#: Third-party packages a layer must never import, even lazily: the API and the packages under
#: it run without torch installed, and the model code runs without Dramatiq.
FORBIDDEN: dict[str, frozenset[str]] = {
    **{
        package: frozenset({"torch", "torchaudio", "audiocraft"})
        for package in ("api", "workflows", "tasks", "db", "core")
    },
    "audio": frozenset({"dramatiq"}),
}

#: Known violations, each ``"<file> -> <imported module>"``, in files being rewritten: to be
#: emptied, never added to. ``test_pending_is_still_needed`` fails once an entry is fixed, so
#: it is removed with the fix.
PENDING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    module: str  # absolute dotted name, as imported
    top_level: bool  # runs when the module is imported (not in a function, not TYPE_CHECKING)

    @property
    def package(self) -> str:
        return self.module.split(".")[0]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: imports {self.module}"


def source_files() -> list[Path]:
    return sorted(p for package in ALLOWED for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: Path, node: ast.ImportFrom, root: Path) -> str:
    """The absolute module of ``from ... import``, relative ones included."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, root: Path = ROOT) -> Iterator[Import]:
    """Every import of ``path``; ``from m import x`` is ``m.x`` when ``m/x.py`` exists."""
    file = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(), filename=file)

    def visit(node: ast.AST, top_level: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(file, node.lineno, alias.name, top_level)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node, root)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if _exists(sub, root):
                    yield Import(file, node.lineno, sub, top_level)
                else:
                    yield Import(file, node.lineno, module, top_level)
        for child in ast.iter_child_nodes(node):
            runs_now = top_level and not isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(node, ast.If) and _is_type_checking(node) and child in node.body:
                runs_now = False
            yield from visit(child, runs_now)

    yield from visit(tree, True)


def _exists(module: str, root: Path = ROOT) -> bool:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def all_imports() -> list[Import]:
    return [found for path in source_files() for found in imports(path)]


def _pending_key(found: Import) -> str:
    return f"{found.file} -> {found.module}"


def layer_violations() -> list[Import]:
    bad = []
    for found in all_imports():
        own = found.file.split("/")[0]
        target = found.package
        if target in PROJECT and target != own and target not in ALLOWED[own]:
            bad.append(found)
    return bad


def test_packages_import_only_the_layers_below() -> None:
    bad = [
        f"{found.where} ({found.file.split('/')[0]} may import only: "
        f"{', '.join(sorted(ALLOWED[found.file.split('/')[0]])) or 'no project package'})"
        for found in layer_violations()
        if _pending_key(found) not in PENDING
    ]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_light_layers_import_no_heavy_library() -> None:
    bad = [
        f"{found.where} (never in {found.file.split('/')[0]})"
        for found in all_imports()
        if found.package in FORBIDDEN.get(found.file.split("/")[0], ())
        and _pending_key(found) not in PENDING
    ]
    assert not bad, "forbidden libraries:\n" + "\n".join(bad)


def test_pending_is_still_needed() -> None:
    found = {_pending_key(i) for i in layer_violations()} | {
        _pending_key(i)
        for i in all_imports()
        if i.package in FORBIDDEN.get(i.file.split("/")[0], ())
    }
    fixed = sorted(PENDING - found)
    assert not fixed, "fixed: remove from PENDING in tests/test_layers.py:\n" + "\n".join(fixed)


def import_graph() -> dict[str, dict[str, Import]]:
    """Module -> the project modules it imports at module level (and the import's place).

    Importing ``a.b.c`` runs ``a`` and ``a.b`` (their ``__init__``) first: edges to them too.
    """
    graph: dict[str, dict[str, Import]] = {}
    for path in source_files():
        edges = graph.setdefault(module_name(path), {})
        for found in imports(path):
            if not found.top_level or found.package not in ALLOWED:
                continue
            parts = found.module.split(".")
            for n in range(1, len(parts) + 1):
                target = ".".join(parts[:n])
                if _exists(target) and target != module_name(path):
                    edges.setdefault(target, found)
    return graph


def find_cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle (a closed path of modules) per strongly connected group (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(group)) for group in groups]


def _cycle_in(graph: dict[str, dict[str, Import]], group: set[str]) -> list[str]:
    """A closed path through ``group`` (a strongly connected set), from its first module."""
    start = min(group)
    path = [start]
    seen = {start: 0}
    while True:
        nxt = min(n for n in graph[path[-1]] if n in group)
        if nxt in seen:
            return [*path[seen[nxt] :], nxt]
        seen[nxt] = len(path)
        path.append(nxt)


def test_module_level_imports_have_no_cycle() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    report = [
        " -> ".join(cycle)
        + "".join(f"\n    {graph[a][b].where}" for a, b in itertools.pairwise(cycle))
        for cycle in cycles
    ]
    assert not cycles, "module-level import cycles:\n" + "\n".join(report)


HEAVY = frozenset({"torch", "torchaudio", "audiocraft"})


def test_the_api_never_loads_torch() -> None:
    # Every project module the API's modules reach (at import or inside a function, however
    # indirectly) stays clear of torch: the API serves without it, and never pays its start-up.
    by_module: dict[str, list[Import]] = {}
    for found in all_imports():
        by_module.setdefault(module_name(ROOT / found.file), []).append(found)
    reached: dict[str, list[str]] = {
        module_name(p): [module_name(p)] for p in (ROOT / "api").rglob("*.py")
    }
    todo = list(reached)
    bad = []
    while todo:
        module = todo.pop()
        for found in by_module.get(module, []):
            if found.package in HEAVY:
                bad.append(" -> ".join(reached[module]) + f"\n    {found.where}")
            elif found.package in ALLOWED and found.module not in reached:
                target = found.module if _exists(found.module) else found.module.rsplit(".", 1)[0]
                if target not in reached and _exists(target):
                    reached[target] = [*reached[module], target]
                    todo.append(target)
    assert not bad, "the API reaches torch:\n" + "\n".join(bad)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    # Guards the checker itself: relative, submodule and lazy imports are found, and those
    # under TYPE_CHECKING or in a function do not count as module-level.
    package = tmp_path / "api"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "services.py").write_text("")
    (package / "app.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import services\n"
        "from .services import Services\n"
        "import actors.registry\n"
        "if TYPE_CHECKING:\n"
        "    from aimarket import broker\n"
        "def f():\n"
        "    from audio.audio_input import decode_audio\n"
    )
    found = {(i.line, i.module, i.top_level) for i in imports(package / "app.py", tmp_path)}
    assert found == {
        (1, "typing", True),
        (2, "api.services", True),
        (3, "api.services", True),
        (4, "actors.registry", True),
        (6, "aimarket", False),
        (8, "audio.audio_input", False),
    }
    graph = {"a": {"b": Import("a.py", 1, "b", True)}, "b": {"a": Import("b.py", 2, "a", True)}}
    assert find_cycles(graph) == [["a", "b", "a"]]
