"""Compiles a loaded workflow into an execution plan, once per process.

Two shapes, both on Dramatiq:

* a **pipeline** when the stages form a straight line with nothing to decide at run time
  (no ``needs``, ``when``, ``foreach`` or ``input`` expressions): Dramatiq's own ``pipeline``
  carries each stage's result to the next, with no bookkeeping of ours;
* a **DAG** otherwise: ``task.start`` queues the roots, and each finished stage queues
  whatever it unblocked (``actors/dag.py``), with joins made exactly-once by the database.

``finally`` handlers run after the last stage either way; ``on_failure`` then ``finally``
handlers run when the task fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dramatiq
import msgspec

from workflows.spec import Stage, Workflow

#: The actor that starts a DAG run on a worker (the API only publishes this one message).
START_ACTOR = "task.start"
RESUME_ACTOR = "task.resume"
#: The actor that POSTs the final task view to the client.
CALLBACK_ACTOR = "task.callback"


#: The message option naming the stage before this one in a pipeline, whose ``done`` this
#: stage records as it starts (one state write per stage, not two).
AFTER_OPTION = "after"
#: The message option carrying :class:`TaskFacts`.
FACTS_OPTION = "task"


class TaskFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a pipeline's messages carry about their task, fixed when it is submitted, so a
    stage decides whether it runs without reading the task's row (``tasks/lifecycle.py``)."""

    #: UNIX time past which no stage may start (created_at + the workflow's deadline).
    deadline_at: float
    #: The intermediate events the client asked for (``started``, ``progress``).
    events: tuple[str, ...] = ()

    def option(self) -> dict[str, Any]:
        return {FACTS_OPTION: msgspec.to_builtins(self)}

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> TaskFacts | None:
        """The facts in a message's options (None in messages sent without them)."""
        raw = options.get(FACTS_OPTION)
        return None if raw is None else msgspec.convert(raw, cls)


@dataclass(frozen=True)
class Step:
    stage: Stage
    queue: str
    options: dict[str, Any]

    def message(
        self, workflow: str, task_id: str, arg: Any = None, **extra: Any
    ) -> dramatiq.Message[Any]:
        """This step's message: ids only, plus the DAG marker or nothing."""
        args: tuple[Any, ...] = (task_id, workflow, self.stage.id)
        if arg is not None:
            args += (arg,)
        return dramatiq.Message(
            queue_name=self.queue,
            actor_name=self.stage.actor,
            args=args,
            kwargs={},
            options={**self.options, **extra},
        )


@dataclass(frozen=True)
class Plan:
    workflow: Workflow
    mode: Literal["pipeline", "dag"]
    steps: tuple[Step, ...]
    on_failure: tuple[Step, ...] = ()
    finally_: tuple[Step, ...] = ()
    _index: dict[str, Step] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for step in (*self.steps, *self.on_failure, *self.finally_):
            self._index[step.stage.id] = step

    def step(self, stage_id: str) -> Step:
        return self._index[stage_id]

    def has(self, stage_id: str) -> bool:
        """Whether ``stage_id`` is a stage (main or handler) of this plan."""
        return stage_id in self._index

    def is_handler(self, stage_id: str) -> bool:
        """Whether ``stage_id`` runs after the task has ended (on_failure or finally)."""
        return any(step.stage.id == stage_id for step in (*self.on_failure, *self.finally_))

    def start(self, broker: dramatiq.Broker, task_id: str, facts: TaskFacts | None = None) -> None:
        """Publish the first message of a run (blocking: call it from a thread)."""
        if self.mode == "pipeline":
            self.pipeline(broker, task_id, facts).run()  # type: ignore[no-untyped-call]
        else:
            broker.enqueue(self._control(START_ACTOR, task_id))

    def resume(self, broker: dramatiq.Broker, task_id: str) -> None:
        """Start again a run whose messages were lost (the in-process queue of a process that
        stopped): a pipeline from its first stage, a DAG from the runs it had not finished."""
        if self.mode == "pipeline":
            self.start(broker, task_id)
            return
        broker.enqueue(self._control(RESUME_ACTOR, task_id))

    def _control(self, actor: str, task_id: str) -> dramatiq.Message[Any]:
        """A message to one of the runtime's own actors (task.start, task.resume)."""
        return dramatiq.Message(
            queue_name="default",
            actor_name=actor,
            args=(task_id, self.workflow.name),
            kwargs={},
            options={"max_retries": 10, "min_backoff": 500},
        )

    def pipeline(
        self, broker: dramatiq.Broker, task_id: str, facts: TaskFacts | None = None
    ) -> dramatiq.pipeline:
        """The straight run: every stage, then the ``finally`` handlers. With ``facts``, each
        main stage's message carries them, and names the main stage before it (AFTER_OPTION)."""
        name = self.workflow.name
        messages = []
        for i, step in enumerate(self.steps):
            extra: dict[str, Any] = {}
            if facts is not None:
                extra |= facts.option()
                if i:
                    extra[AFTER_OPTION] = self.steps[i - 1].stage.id
            messages.append(step.message(name, task_id, **extra))
        messages += [s.message(name, task_id) for s in self.finally_]
        return dramatiq.pipeline(messages, broker=broker)

    def handlers(self, broker: dramatiq.Broker, task_id: str, failed: bool) -> dramatiq.pipeline:
        """What runs once the task has ended: on_failure (when it failed), then finally."""
        steps = (*(self.on_failure if failed else ()), *self.finally_)
        return dramatiq.pipeline(
            [s.message(self.workflow.name, task_id) for s in steps], broker=broker
        )

    def handler_steps(self, failed: bool) -> tuple[Step, ...]:
        return (*(self.on_failure if failed else ()), *self.finally_)

    def calls_back(self, status: str) -> bool:
        """Whether a task of this workflow that ended ``status`` is told by ``task.callback``
        (some workflows tell their client by other stages, or not at all)."""
        if status == "succeeded":
            steps: tuple[Step, ...] = (*self.steps, *self.finally_)
        else:
            steps = self.handler_steps(failed=status == "failed")
            if not steps:
                return True  # the lifecycle's announce_end sends the callback itself
        return any(step.stage.actor == CALLBACK_ACTOR for step in steps)


def message_options(stage: Stage) -> dict[str, Any]:
    """Dramatiq message options for a stage's retry policy (read by StageRetries) and its
    time limit (Dramatiq's TimeLimit)."""
    retry = stage.retry
    options: dict[str, Any] = {
        "max_retries": retry.max_attempts - 1,
        "retry_policy": {
            "max_attempts": retry.max_attempts,
            "backoff_initial_s": retry.backoff_initial_s,
            "backoff_factor": retry.backoff_factor,
            "backoff_max_s": retry.backoff_max_s,
            "jitter": retry.jitter,
            "retry_on": list(retry.retry_on),
        },
    }
    if stage.timeout_s is not None:
        options["time_limit"] = int(stage.timeout_s * 1000)
    return options


def is_straight(workflow: Workflow) -> bool:
    """True when a Dramatiq pipeline can run it: one line, nothing decided at run time."""
    previous: str | None = None
    for stage in workflow.stages:
        expected = () if previous is None else (previous,)
        if stage.needs != expected or stage.when or stage.foreach or stage.input:
            return False
        previous = stage.id
    return True


def compile_workflow(workflow: Workflow, actor_queues: Mapping[str, str]) -> Plan:
    def step(stage: Stage) -> Step:
        queue = stage.queue or actor_queues[stage.actor]
        return Step(stage=stage, queue=queue, options=message_options(stage))

    return Plan(
        workflow=workflow,
        mode="pipeline" if is_straight(workflow) else "dag",
        steps=tuple(step(s) for s in workflow.stages),
        on_failure=tuple(step(s) for s in workflow.on_failure),
        finally_=tuple(step(s) for s in workflow.finally_),
    )


def declare_queues(broker: dramatiq.Broker, plans: Mapping[str, Plan]) -> None:
    """Declare every queue a plan routes to (a stage may override its actor's queue)."""
    broker.declare_queue("default")
    for plan in plans.values():
        for step in (*plan.steps, *plan.on_failure, *plan.finally_):
            broker.declare_queue(step.queue)
