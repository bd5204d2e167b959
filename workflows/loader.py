"""Read workflow YAML files, check them, and build ``Workflow`` structs.

The checker works on the YAML node tree (``yaml.compose``), not on plain Python values, so
every problem can point at the line and column of the node that caused it. It never stops at
the first problem: a file is checked to the end and every diagnostic comes back at once.

The diagnostic codes, and what each means, are listed in ``workflows.diagnostics``. The
checks live in ``workflows.checker`` and the ``check_*`` modules, one per part of the
language.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.settings import Settings
from workflows.catalog import StageCatalog
from workflows.checker import Checker
from workflows.checking import Context
from workflows.diagnostics import CODES, Diagnostic, WorkflowError, has_errors
from workflows.spec import Workflow
from workflows.yaml_nodes import position

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

#: RabbitMQ's default ``consumer_timeout`` (30 min). Dramatiq acks a message only after the
#: actor returns, and holds a retried message unacked while its backoff runs, so a stage's
#: run time and its longest backoff must both stay below it, or RabbitMQ closes the channel
#: and redelivers the message (see dramatiq issue #827).
DEFAULT_BROKER_ACK_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class _Result:
    workflow: Workflow | None
    diagnostics: list[Diagnostic]
    name_node: yaml.Node | None  # where duplicate-workflow points


# --- public API ------------------------------------------------------------------------------


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
    context = Context(
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
    context = Context(
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


def _check(path: Path, context: Context) -> _Result:
    checker = Checker(path, context)
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
    line, column = position(name_node)
    return Diagnostic(
        file=str(path),
        line=line,
        column=column,
        severity="error",
        code="duplicate-workflow",
        message=f"workflow {first.name!r} is already defined in {first.source}",
        hint="rename one of them: a later folder may not replace a workflow",
    )


def load_configured(settings: Settings, catalog: StageCatalog) -> dict[str, Workflow]:
    """The built-in workflows and those of WORKFLOWS_DIRS, checked against the stage actors of
    ``catalog`` (``workflows.catalog.stage_catalog(broker)``), their outputs and the known
    queues."""
    return load_workflows(
        [BUILTIN_DIR, *settings.extra_workflow_dirs],
        catalog.queues,
        settings,
        actor_outputs=catalog.outputs,
        extra_queues=settings.extra_queue_names,
    )
