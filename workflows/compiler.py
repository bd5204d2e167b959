"""Compiles a loaded workflow into a Dramatiq execution plan, once per process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq

from workflows.spec import Stage, Workflow


@dataclass(frozen=True)
class Step:
    stage: Stage
    queue: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    workflow: Workflow
    steps: tuple[Step, ...]

    def pipeline(self, broker: dramatiq.Broker, task_id: str) -> dramatiq.pipeline:
        """The messages of one run; each carries only the task id and the stage's place."""
        messages: list[dramatiq.Message[Any]] = [
            dramatiq.Message(
                queue_name=step.queue,
                actor_name=step.stage.actor,
                args=(task_id, self.workflow.name, step.stage.id),
                kwargs={},
                options=dict(step.options),
            )
            for step in self.steps
        ]
        return dramatiq.pipeline(messages, broker=broker)


def message_options(stage: Stage) -> dict[str, Any]:
    """Dramatiq message options for a stage's retry policy and time limit."""
    options: dict[str, Any] = {
        "max_retries": stage.retry.max_attempts - 1,
        "min_backoff": int(stage.retry.backoff_initial_s * 1000),
        "max_backoff": int(stage.retry.backoff_max_s * 1000),
    }
    if stage.timeout_s is not None:
        options["time_limit"] = int(stage.timeout_s * 1000)
    return options


def compile_workflow(workflow: Workflow, actor_queues: Mapping[str, str]) -> Plan:
    steps = tuple(
        Step(
            stage=stage,
            queue=stage.queue or actor_queues[stage.actor],
            options=message_options(stage),
        )
        for stage in workflow.stages
    )
    return Plan(workflow, steps)


def declare_queues(broker: dramatiq.Broker, plans: Mapping[str, Plan]) -> None:
    """Declare every queue a plan routes to (a stage may override its actor's queue)."""
    for plan in plans.values():
        for step in plan.steps:
            broker.declare_queue(step.queue)
