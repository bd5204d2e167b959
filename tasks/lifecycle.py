"""Every transition of a task, in one place: submit, start, end, cancel, and telling the client.

A task is ``queued`` when accepted, ``running`` once its first main stage starts, and ends
exactly once: ``succeeded``, ``failed`` or ``cancelled`` (``db/tasks.py``: the first ending
wins). The API routes, the stage wrapper (``actors/registry.py``), ``task.fail``, the sweep and
embedded resume all go through :class:`Lifecycle`; none of them writes a task's status itself.

Guarantees, stated once:

* **submit** stores the task, then queues it (a worker never sees a task that is not stored);
  when the queue refuses, the task ends ``failed`` (``queue_unavailable``) and its admission
  and idempotency key are given back, so nothing accepted is left hanging.
* **begin** (before every stage) says whether the stage runs: never for a task that was
  cancelled or failed meanwhile, nor past the workflow's deadline (the task then ends
  ``failed``/``timeout`` through ``task.fail``). A pipeline stage decides from the facts its
  message carries and one state round trip; any other reads the task's row, once.
* **end** and **cancel** record the ending first, then tell the client (``announce_end``):
  a crash in between leaves a task the sweep finds ended but untold, and tells.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any

import dramatiq

from core.backends import State
from core.settings import Settings
from db import idempotency
from db.engine import Database
from db.models import Task, TaskStatus
from db.tasks import finish_task, get_task, insert_task, reopen_task, start_task, utcnow
from tasks.decision import Decision, Verdict
from tasks.errors import Refused
from tasks.submission import Gate, Submission, Submitted, check_key, check_urls, same_body
from workflows.compiler import AFTER_OPTION, CALLBACK_ACTOR, Plan, TaskFacts
from workflows.inputs import InputError, validate_input
from workflows.spec import Workflow

log = logging.getLogger(__name__)

#: The actor that ends a task failed and tells its client (``actors/lifecycle.py``).
FAIL_ACTOR = "task.fail"
#: The actor that delivers intermediate events (``actors/events.py``).
EVENT_ACTOR = "task.event"
#: Actors that run after a task has ended: they are never stopped by its ending.
AFTER_END_ACTORS = frozenset({CALLBACK_ACTOR})
#: Actors whose run does not make a queued task ``running`` (a quick check before the task
#: waits in, say, a GPU queue: a marketplace shows "queued" while its users' tasks wait).
BEFORE_START_ACTORS = frozenset({"task.validate"})
CANCEL_MESSAGE = "cancelled by the client"


class Lifecycle:
    """The task transitions of one process (the API's, or a worker's)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        state: State,
        broker: dramatiq.Broker,
        plans: Mapping[str, Plan],
        workflows: Mapping[str, Workflow],
        executor: Executor | None = None,
    ) -> None:
        self.settings, self.db, self.state, self.broker = settings, db, state, broker
        self.plans, self.workflows = plans, workflows
        #: Publishing blocks (a confirmed publish): it runs here, off the event loop.
        self.executor = executor

    async def _publish(self, call: Callable[[], object]) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, call)

    # --- submit --------------------------------------------------------------------------

    async def submit(
        self, data: Submission, gate: Gate, idempotency_key: str | None = None
    ) -> Submitted:
        """Validate, record, then queue one task; the one way in for the API and the CLI.

        Raises :class:`Refused` for anything refused; nothing is stored then. With an
        ``idempotency_key`` this user already used with the same body, returns that task
        (nothing new is stored or queued); with another body, a 409. Of concurrent
        submissions with one key, the unique index on (user_id, idempotency_key) lets one
        insert; the others read and return its task.
        """
        body_hash = None
        if idempotency_key is not None:
            check_key(idempotency_key)
            body_hash = idempotency.request_hash(
                data.workflow, data.user_id, data.input, data.callback_url, list(data.events)
            )
            # Before validation: a replay costs one indexed read, no DNS look-up.
            earlier = await idempotency.task_by_key(self.db, data.user_id, idempotency_key)
            if earlier is not None:
                return Submitted(same_body(earlier, body_hash), replayed=True)

        workflow = self.workflows.get(data.workflow)
        if workflow is None:
            known = ", ".join(sorted(self.workflows))
            raise Refused(
                422, "unknown_workflow", f"no workflow '{data.workflow}' (known: {known})",
                "workflow",
            )  # fmt: skip
        try:
            clean_input = validate_input(workflow, data.input)
        except InputError as exc:
            raise Refused(422, "invalid_input", exc.message, exc.field) from None
        await check_urls(self.settings, workflow, clean_input, data.callback_url)

        task = Task(
            id=str(uuid.uuid4()),
            workflow=workflow.name,
            workflow_version=workflow.version,
            user_id=data.user_id,
            status=TaskStatus.QUEUED,
            input=clean_input,
            callback_url=data.callback_url,
            outputs=[],
            audio_s=0.0,
            created_at=utcnow(),
            idempotency_key=idempotency_key,
            request_hash=body_hash,
            callback_events=sorted(set(data.events) - {"completed"}) or None,
        )
        plan = self.plans[workflow.name]
        # Limits (429, 503) after validation, so a 422 spends no budget, and before anything
        # is stored; a replay was answered above and is never refused. Not stored or queued
        # after all: the task's slot is given back.
        ticket = await gate.admit(plan, task.user_id, task.id)
        try:
            if idempotency_key is None:
                await insert_task(self.db, task)
                inserted = True
            else:
                task, inserted = await idempotency.insert_task_once(self.db, task)
        except BaseException:
            await ticket.release()
            raise
        if not inserted:
            await ticket.release()
            assert body_hash is not None
            return Submitted(same_body(task, body_hash), replayed=True)
        # Sent only after the commit above, so a worker never sees a task that is not there.
        try:
            facts = self.facts(task, plan)
            await self._publish(partial(plan.start, self.broker, task.id, facts))
        except Exception as exc:
            log.error("could not queue task %s: %s", task.id, exc)
            await ticket.release()
            await finish_task(
                self.db, task.id, TaskStatus.FAILED, error_code="queue_unavailable",
                error_message="the task could not be queued; submit it again",
            )  # fmt: skip
            if idempotency_key is not None:
                # "Submit it again" must then work with the same key, not replay this failure.
                await idempotency.release_key(self.db, task.id)
            unavailable = "the queue is unavailable; retry later"
            raise Refused(503, "queue_unavailable", unavailable) from None
        return Submitted(task, replayed=False)

    # --- stages --------------------------------------------------------------------------

    async def begin(
        self, actor: str, task_id: str, workflow: str, stage_id: str, options: Mapping[str, Any]
    ) -> Decision:
        """Whether this stage runs now; when it does, it is recorded ``running``.

        * A main stage of a task that has already ended ``cancelled`` or ``failed`` (a cancel,
          or another branch's failure, came while its message waited) does not run: nothing
          more is computed or sent for a task whose client has been told it ended. Handlers
          (``on_failure``, ``finally``) and the callback run after the end by design.
        * A stage of a task past its workflow's deadline does not start: the task ends
          ``failed`` with code ``timeout`` through ``task.fail``, which tells the client.
        * The first main stage to start, other than ``task.validate``, moves the task from
          ``queued`` to ``running`` and sends the ``started`` event when the client asked.

        A pipeline stage whose message carries the task's facts (``TaskFacts``: its deadline
        and wanted events, fixed at submission) decides without the database: the ended mark
        (set by a cancel or the sweep) comes back from the same state write that records the
        stage running, one round trip. Every other stage, and any stage while the state cannot
        be reached, reads the task's row (once: the stage gets it).
        """
        plan = self.plans.get(workflow)
        facts = TaskFacts.of(options)
        after = options.get(AFTER_OPTION)
        if (
            facts is not None
            and plan is not None
            and plan.mode == "pipeline"
            and actor not in AFTER_END_ACTORS
            and not plan.is_handler(stage_id)
        ):
            ended = await self.state.stage_started(task_id, stage_id, after)
            if ended is not None:
                return await self._decide_lean(actor, task_id, plan, stage_id, facts, ended)
        decision = await self._decide_by_row(actor, task_id, plan, stage_id)
        if decision.runs:
            await self.state.stage_started(task_id, stage_id, after)
        return decision

    async def _decide_lean(
        self, actor: str, task_id: str, plan: Plan, stage_id: str, facts: TaskFacts, ended: bool
    ) -> Decision:
        if ended:
            log.info("task %s has ended: stage %s dropped", task_id, stage_id)
            return Decision(Verdict.DROP)
        if time.time() > facts.deadline_at:
            return await self._expired(task_id, plan, stage_id)
        task = None
        started = _starts(plan, actor, stage_id) and await start_task(self.db, task_id)
        if started and "started" in facts.events:
            task = await get_task(self.db, task_id)
            if task is not None:
                await self.emit(task, "started", "started")
        return Decision(Verdict.RUN, task, progress="progress" in facts.events)

    async def _decide_by_row(
        self, actor: str, task_id: str, plan: Plan | None, stage_id: str
    ) -> Decision:
        task = await get_task(self.db, task_id)
        if actor in AFTER_END_ACTORS or task is None:
            return Decision(Verdict.RUN, task)  # a stage says what a missing task means
        if plan is not None and plan.is_handler(stage_id):
            return Decision(Verdict.RUN, task)
        status = TaskStatus(task.status)
        if status in (TaskStatus.CANCELLED, TaskStatus.FAILED):
            log.info("task %s is %s: stage %s dropped", task_id, status, stage_id)
            return Decision(Verdict.DROP, task)
        if status.terminal or plan is None:
            return Decision(Verdict.RUN, task)
        if (utcnow() - task.created_at).total_seconds() > self.deadline_s(plan):
            return await self._expired(task_id, plan, stage_id)
        if status == TaskStatus.QUEUED and actor not in BEFORE_START_ACTORS:
            await self.start(task)
        return Decision(Verdict.RUN, task, progress="progress" in (task.callback_events or ()))

    async def _expired(self, task_id: str, plan: Plan, stage_id: str) -> Decision:
        deadline_s = self.deadline_s(plan)
        log.warning(
            "task %s passed its deadline of %g s before stage %s", task_id, deadline_s, stage_id
        )
        message = f"the task did not finish within its deadline of {deadline_s:g} s"
        await self.queue_failure(task_id, stage_id, "timeout", message)
        return Decision(Verdict.EXPIRED)

    def deadline_s(self, plan: Plan | None) -> float:
        """A task's deadline in seconds: its workflow's, else TASK_DEADLINE_S (a workflow
        that is gone)."""
        default = self.settings.task_deadline_s
        return plan.workflow.deadline(default) if plan is not None else default

    def facts(self, task: Task, plan: Plan) -> TaskFacts:
        """What the task's pipeline messages carry about it (see ``begin``)."""
        deadline_at = task.created_at.timestamp() + self.deadline_s(plan)
        return TaskFacts(deadline_at=deadline_at, events=tuple(task.callback_events or ()))

    async def start(self, task: Task) -> bool:
        """queued -> running, once; the ``started`` event when the client asked for it."""
        if not await start_task(self.db, task.id):
            return False
        task.status = TaskStatus.RUNNING
        await self.emit(task, "started", "started")
        return True

    async def stage_ended(self, task: Task, stage_id: str) -> None:
        """A whole main stage (not one foreach item) ended: a ``progress`` event, if wanted."""
        await self.emit(task, "progress", f"progress:{stage_id}")

    async def emit(self, task: Task, event: str, key: str) -> None:
        """Queue the ``event`` callback when the task asked for it and has somewhere to send
        it. ``key`` names this event within the task (``started``, ``progress:generate:50``).
        An event is optional news: failing to queue one does not fail the stage."""
        events = task.callback_events or ()
        if event not in events or not task.callback_target(self.settings.marketplace_callback):
            return
        message = self.broker.get_actor(EVENT_ACTOR).message(task.id, event, f"{task.id}:{key}")
        try:
            await self._publish(partial(self.broker.enqueue, message))
        except Exception as exc:
            log.warning("could not queue the %s event of task %s: %s", event, task.id, exc)

    async def queue_failure(self, task_id: str, stage_id: str, code: str, message: str) -> None:
        """Have ``task.fail`` end the task (it retries, and tells the client)."""
        fail = self.broker.get_actor(FAIL_ACTOR).message(task_id, stage_id, code, message)
        await self._publish(partial(self.broker.enqueue, fail))

    # --- endings -------------------------------------------------------------------------

    async def succeed(
        self, task_id: str, outputs: Sequence[dict[str, Any]], audio_s: float
    ) -> bool:
        """running -> succeeded with the task's outputs (the last main stage's doing, which is
        then followed by the callback stage). True when this call ended it, or it had already
        succeeded (a redelivery); False when it ended otherwise meanwhile (cancelled)."""
        ended = await finish_task(
            self.db, task_id, TaskStatus.SUCCEEDED, outputs=outputs, audio_s=audio_s
        )
        if not ended:
            task = await get_task(self.db, task_id)
            if task is None or task.status != TaskStatus.SUCCEEDED:
                return False
        await self.state.set_result(
            task_id, {"status": TaskStatus.SUCCEEDED, "outputs": list(outputs)}
        )
        return True

    async def fail(self, task_id: str, code: str, message: str) -> bool:
        """Ends a task ``failed`` with a client-facing error, then tells the client (the
        workflow's on_failure and finally handlers, else the callback). False when it had
        already ended: nothing more is told."""
        ended = await finish_task(
            self.db, task_id, TaskStatus.FAILED, error_code=code, error_message=message
        )
        if not ended:
            return False
        await self.state.set_result(task_id, {"status": TaskStatus.FAILED, "code": code})
        task = await get_task(self.db, task_id)
        if task is not None:
            await self.announce_end(task_id, task.workflow, failed=True)
        return True

    async def cancel(self, task: Task) -> Task:
        """Ends ``task`` ``cancelled`` at once (a task that succeeds or fails at the same
        instant is either cancelled or refused 409, never both), marks it for a generation
        decoding it (which stops at its next step), then tells the client."""
        task_id = task.id
        ended = not TaskStatus(task.status).terminal and await finish_task(
            self.db, task_id, TaskStatus.CANCELLED, error_code="cancelled",
            error_message=CANCEL_MESSAGE,
        )  # fmt: skip
        if not ended:
            task = await get_task(self.db, task_id) or task
            raise Refused(
                409, "already_finished", f"task {task_id} has already ended: {task.status}"
            )
        try:
            await self.state.set_cancelled(task_id)
        except Exception as exc:  # the row says cancelled: no stage will start after this
            log.warning("could not mark task %s cancelled for a running stage: %s", task_id, exc)
        try:
            # finally handlers run (on_failure does not: a cancel is not a failure).
            await self.announce_end(task_id, task.workflow, failed=False)
        except Exception as exc:
            log.error("could not queue the callback of cancelled task %s: %s", task_id, exc)
        return await get_task(self.db, task_id) or task

    async def end_stopped(self, task_id: str, workflow: str, code: str, message: str) -> bool:
        """Ends ``failed`` a task that stopped moving (the sweep: past its deadline, or stuck)
        and tells the client, as ``task.fail`` does. False when it ended meanwhile.

        The row is ended here, before anything else, rather than by sending ``task.fail``:
        the cancel mark stops a running generation with its own error, which must find the
        task already ended (as after a cancel) instead of racing ``task.fail`` to end it.
        """
        if not await finish_task(
            self.db, task_id, TaskStatus.FAILED, error_code=code, error_message=message
        ):
            return False  # first ending wins
        try:
            await self.state.set_cancelled(task_id)
            await self.state.set_result(task_id, {"status": TaskStatus.FAILED, "code": code})
        except Exception as exc:  # the row says failed: nothing after this stage will run
            log.warning("could not mark task %s in the state: %s", task_id, exc)
        try:
            await self.announce_end(task_id, workflow, failed=True)
        except Exception as exc:
            log.error("could not queue the callback of task %s: %s", task_id, exc)
        return True

    async def settle(self, task_id: str) -> bool:
        """A DAG run whose stages have all settled: it ends ``succeeded`` unless a stage has
        ended it already (``task.aggregate``, with the outputs, or a failure or cancel). True
        when it stands succeeded, so its ``finally`` handlers are due."""
        await finish_task(self.db, task_id, TaskStatus.SUCCEEDED)
        task = await get_task(self.db, task_id)
        return task is not None and task.status == TaskStatus.SUCCEEDED

    async def reopen(self, task: Task) -> None:
        """failed -> running, so that a stage an operator retries (a dead letter) can finish
        the task. Refused (409) for a task past its deadline (the next sweep would end it
        ``timeout``) or that did not end ``failed``; a task still active needs no reopening."""
        if not TaskStatus(task.status).terminal:
            return
        if task.status != TaskStatus.FAILED:
            raise Refused(409, "task_ended", f"task {task.id} has ended {task.status}")
        plan = self.plans.get(task.workflow)
        deadline_s = self.deadline_s(plan)
        if time.time() >= task.created_at.timestamp() + deadline_s:
            raise Refused(
                409, "deadline_passed", f"task {task.id} is past its deadline of {deadline_s:g} s"
            )
        if not await reopen_task(self.db, task.id):
            raise Refused(409, "task_ended", f"task {task.id} has ended and cannot be reopened")

    async def tell_again(self, task_id: str, workflow: str) -> None:
        """Queue the final callback of an ended task whose client was never told (the sweep
        decides when)."""
        callback = self.broker.get_actor(CALLBACK_ACTOR).message(task_id, workflow, "callback")
        await self._publish(partial(self.broker.enqueue, callback))

    async def resume(self, task_id: str, workflow: str) -> bool:
        """Start again a run whose messages were lost (an embedded restart, the sweep): a
        pipeline from its first stage, a DAG from the runs it had not finished (stages are
        safe to repeat). A task whose workflow is gone ends ``failed`` (``workflow_removed``)
        and False is returned."""
        plan = self.plans.get(workflow)
        if plan is None:
            await finish_task(
                self.db, task_id, TaskStatus.FAILED, error_code="workflow_removed",
                error_message=f"workflow '{workflow}' no longer exists; the task was not resumed",
            )  # fmt: skip
            return False
        await self._publish(partial(plan.resume, self.broker, task_id))
        return True

    async def announce_end(self, task_id: str, workflow: str, *, failed: bool) -> None:
        """Tell the client that a task ended other than by its own last stage (a stage failed
        for good, a cancel, the sweep): the workflow's handlers that apply (``on_failure``
        only when it failed, then ``finally``) when it has any, else the callback (also when
        the workflow is gone)."""
        plan = self.plans.get(workflow)
        if plan is not None and plan.handler_steps(failed):
            run = plan.handlers(self.broker, task_id, failed=failed).run
            await self._publish(run)
            return
        callback = self.broker.get_actor(CALLBACK_ACTOR).message(task_id, workflow, "callback")
        await self._publish(partial(self.broker.enqueue, callback))


def _starts(plan: Plan, actor: str, stage_id: str) -> bool:
    """Whether this pipeline stage is the one that moves its task to ``running``: the first
    main stage that is not a quick check before the wait (``task.validate``)."""
    for step in plan.steps:
        if step.stage.actor not in BEFORE_START_ACTORS:
            return step.stage.id == stage_id
    return False
