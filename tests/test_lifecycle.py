"""The task lifecycle's transitions and the stage decision, in process: the real Postgres and
Redis, a Dramatiq StubBroker whose queues show what each transition sent. No worker, no
subprocess, no sleep."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from core.settings import load_settings
from core.state import TaskState
from db.engine import Database
from db.migrate import upgrade
from db.models import Task, TaskStatus
from db.tasks import finish_task, get_task, insert_task, utcnow
from tasks.errors import Refused
from tasks.lifecycle import CANCEL_MESSAGE, Lifecycle, Verdict
from workflows.compiler import AFTER_OPTION, FACTS_OPTION, TaskFacts, compile_workflow
from workflows.loader import load_workflows

WORKFLOW = """
name: straight
version: 1
input:
  prompt: {type: string}
deadline_s: 600
stages:
  - {id: check, actor: task.validate}
  - {id: one, actor: test.noop}
  - {id: two, actor: test.noop}
  - {id: aggregate, actor: task.aggregate}
  - {id: callback, actor: task.callback}
"""
T = TypeVar("T")
ACTORS = {
    "task.validate": "default",
    "test.noop": "default",
    "task.aggregate": "default",
    "task.callback": "callbacks",
}


@dataclass
class Gate:
    """Admission that lets everything in and counts what was given back."""

    released: list[str] = field(default_factory=list)

    async def admit(self, plan: Any, user_id: str, task_id: str) -> Gate.Ticket:
        return Gate.Ticket(self, task_id)

    @dataclass
    class Ticket:
        gate: Gate
        task_id: str

        async def release(self) -> None:
            self.gate.released.append(self.task_id)


@dataclass
class Body:
    workflow: str = "straight"
    user_id: str = "u1"
    input: dict[str, Any] = field(default_factory=lambda: {"prompt": "x"})
    callback_url: str | None = "https://example.com/hook"
    events: list[str] = field(default_factory=list)


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    for name, queue in (("task.fail", "default"), ("task.event", "callbacks")):
        dramatiq.actor(lambda *a: None, actor_name=name, queue_name=queue, broker=broker)
    dramatiq.actor(
        lambda *a: None, actor_name="task.callback", queue_name="callbacks", broker=broker
    )
    for queue in ("default", "callbacks"):
        broker.declare_queue(queue)
    yield broker
    broker.close()


@dataclass
class Harness:
    """Runs a test body on one event loop with a Lifecycle whose connections belong to it."""

    settings: Any
    workflows: dict[str, Any]
    plans: dict[str, Any]
    broker: StubBroker
    database_url: str
    redis_url: str

    def run(self, body: Callable[[Lifecycle], Awaitable[T]]) -> T:
        async def go() -> T:
            db = Database(self.database_url, pool_size=2)
            state = TaskState.from_url(self.redis_url, ttl_s=60)
            lifecycle = Lifecycle(self.settings, db, state, self.broker, self.plans, self.workflows)
            try:
                return await body(lifecycle)
            finally:
                await db.dispose()
                await state.close()

        return asyncio.run(go())

    def submit(self, **body: Any) -> tuple[str, dict[str, Any]]:
        """A submitted task's id, and the options of its first message."""
        submitted = self.run(lambda lc: lc.submit(Body(**body), Gate()))
        first = sent(self.broker, "default")[-1]
        return submitted.task.id, dict(first.options)


@pytest.fixture
def harness(tmp_path: Path, database_url: str, redis_db: int, broker: StubBroker) -> Harness:
    (tmp_path / "straight.yaml").write_text(WORKFLOW)
    redis_url = f"redis://127.0.0.1/{redis_db}"
    settings = load_settings(
        {"CALLBACK_ALLOWLIST": "example.com", "REDIS_URL": redis_url}, env_file=None
    )
    workflows = load_workflows([tmp_path], ACTORS, settings)
    plans = {name: compile_workflow(wf, ACTORS) for name, wf in workflows.items()}
    return Harness(settings, workflows, plans, broker, database_url, redis_url)


def sent(broker: StubBroker, queue: str) -> list[dramatiq.Message[Any]]:
    return [dramatiq.Message.decode(m) for m in broker.queues[queue].queue]


def _options(first: dict[str, Any], after: str) -> dict[str, Any]:
    return {**first, AFTER_OPTION: after}


def test_submit_stores_then_queues_the_pipeline_with_its_facts(harness: Harness) -> None:
    async def go(lc: Lifecycle) -> Any:
        submitted = await lc.submit(Body(events=["started"]), Gate())
        return submitted, await get_task(lc.db, submitted.task.id)

    submitted, row = harness.run(go)
    assert not submitted.replayed
    assert row is not None
    assert row.status == TaskStatus.QUEUED
    [first] = sent(harness.broker, "default")
    assert first.args[:3] == (row.id, "straight", "check")
    facts = TaskFacts.of(first.options)
    assert facts is not None
    assert facts.events == ("started",)
    assert facts.deadline_at == pytest.approx(row.created_at.timestamp() + 600, abs=1)
    # Every later main stage names the one before it, whose `done` it records.
    target = first.options["pipe_target"]
    assert target["options"][AFTER_OPTION] == "check"
    assert FACTS_OPTION in target["options"]


def test_refusals_are_one_domain_error_and_store_nothing(harness: Harness) -> None:
    def refused(body: Body) -> Refused:
        with pytest.raises(Refused) as err:
            harness.run(lambda lc: lc.submit(body, Gate()))
        return err.value

    unknown = refused(Body(workflow="nope"))
    assert (unknown.status, unknown.code) == (422, "unknown_workflow")
    bad = refused(Body(input={"prompt": 5}))
    assert (bad.code, bad.field) == ("invalid_input", "input.prompt")
    ssrf = refused(Body(callback_url="http://127.0.0.1/x"))
    assert ssrf.code == "invalid_callback_url"
    assert sent(harness.broker, "default") == []


def test_a_queue_that_refuses_ends_the_task_and_gives_its_slot_back(harness: Harness) -> None:
    gate = Gate()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("down")

    harness.broker.enqueue = refuse  # type: ignore[method-assign]
    with pytest.raises(Refused) as err:
        harness.run(lambda lc: lc.submit(Body(), gate))
    assert (err.value.status, err.value.code) == (503, "queue_unavailable")
    [task_id] = gate.released
    row = harness.run(lambda lc: get_task(lc.db, task_id))
    assert row is not None
    assert (row.status, row.error_code) == (TaskStatus.FAILED, "queue_unavailable")


def test_lean_decision_starts_the_task_without_reading_it(harness: Harness) -> None:
    task_id, first = harness.submit()

    async def go(lc: Lifecycle) -> Any:
        check = await lc.begin("task.validate", task_id, "straight", "check", first)
        queued = await get_task(lc.db, task_id)
        assert queued is not None
        after_check = _options(first, "check")
        one = await lc.begin("test.noop", task_id, "straight", "one", after_check)
        row = await get_task(lc.db, task_id)
        return check, queued.status, one, row, await lc.state.get(task_id)

    check, queued, one, row, live = harness.run(go)
    assert check.verdict is Verdict.RUN
    assert check.task is None
    assert queued == TaskStatus.QUEUED  # validate does not start the task
    assert one.verdict is Verdict.RUN
    assert row.status == TaskStatus.RUNNING
    assert row.started_at is not None
    # One write recorded `one` running and `check` (which left its ending to it) done.
    assert live["stages"]["one"]["status"] == "running"
    assert live["stages"]["check"]["status"] == "done"


def test_started_event_is_sent_once_when_asked(harness: Harness) -> None:
    task_id, first = harness.submit(events=["started"])
    options = _options(first, "check")

    async def go(lc: Lifecycle) -> None:
        await lc.begin("test.noop", task_id, "straight", "one", options)
        await lc.begin("test.noop", task_id, "straight", "one", options)  # a redelivery

    harness.run(go)
    events = [m for m in sent(harness.broker, "callbacks") if m.actor_name == "task.event"]
    assert [m.args[1] for m in events] == ["started"]


def test_a_cancelled_task_drops_its_next_stage_and_tells_the_client(harness: Harness) -> None:
    task_id, first = harness.submit()

    async def go(lc: Lifecycle) -> Any:
        row = await get_task(lc.db, task_id)
        assert row is not None
        cancelled = await lc.cancel(row)
        lean = await lc.begin("test.noop", task_id, "straight", "one", first)
        by_row = await lc.begin("test.noop", task_id, "straight", "one", {})
        return cancelled, lean, by_row

    cancelled, lean, by_row = harness.run(go)
    assert (cancelled.status, cancelled.error_message) == (TaskStatus.CANCELLED, CANCEL_MESSAGE)
    assert lean.verdict is Verdict.DROP  # from the ended mark, without the row
    assert by_row.verdict is Verdict.DROP  # from the row
    told = [m.args[0] for m in sent(harness.broker, "callbacks") if m.actor_name == "task.callback"]
    assert told == [task_id]

    async def again(lc: Lifecycle) -> None:
        row = await get_task(lc.db, task_id)
        assert row is not None
        await lc.cancel(row)

    with pytest.raises(Refused) as err:
        harness.run(again)
    assert (err.value.status, err.value.code) == (409, "already_finished")


def test_past_the_deadline_a_stage_does_not_start_and_the_task_fails(harness: Harness) -> None:
    task_id, first = harness.submit()
    late = {**first, FACTS_OPTION: {"deadline_at": time.time() - 1, "events": []}}
    decision = harness.run(lambda lc: lc.begin("test.noop", task_id, "straight", "one", late))
    assert decision.verdict is Verdict.EXPIRED
    [fail] = [m for m in sent(harness.broker, "default") if m.actor_name == "task.fail"]
    assert fail.args[0] == task_id
    assert fail.args[2] == "timeout"


def test_endings_happen_once(harness: Harness) -> None:
    done_id, _ = harness.submit()
    failed_id, _ = harness.submit()
    outputs = [{"name": "audio", "duration_s": 1.0}]

    async def go(lc: Lifecycle) -> Any:
        first = await lc.succeed(done_id, outputs, 1.0)
        again = await lc.succeed(done_id, outputs, 1.0)  # a redelivery: still true
        failed = await lc.fail(failed_id, "boom", "it broke")
        failed_again = await lc.fail(failed_id, "boom", "it broke")
        late_success = await lc.succeed(failed_id, [], 0.0)
        return first, again, failed, failed_again, late_success, await lc.state.get(done_id)

    first, again, failed, failed_again, late_success, live = harness.run(go)
    assert (first, again) == (True, True)
    assert (failed, failed_again, late_success) == (True, False, False)
    assert live["result"]["status"] == "succeeded"
    told = [m.args[0] for m in sent(harness.broker, "callbacks") if m.actor_name == "task.callback"]
    assert told == [failed_id]  # a failure is told once; a success by its own last stage


def test_the_callback_runs_after_the_end(harness: Harness) -> None:
    task_id, _ = harness.submit()

    async def go(lc: Lifecycle) -> Any:
        await lc.fail(task_id, "boom", "it broke")
        return await lc.begin("task.callback", task_id, "straight", "callback", {})

    decision = harness.run(go)
    assert decision.verdict is Verdict.RUN
    assert decision.task is not None


def test_resume_of_a_removed_workflow_ends_the_task(harness: Harness) -> None:
    task_id, _ = harness.submit()

    async def go(lc: Lifecycle) -> Any:
        return await lc.resume(task_id, "gone"), await get_task(lc.db, task_id)

    resumed, row = harness.run(go)
    assert not resumed
    assert (row.status, row.error_code) == ("failed", "workflow_removed")


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_an_ending_records_its_processing_time(
    dialect: str, database_url: str, tmp_path: Path
) -> None:
    # finish_task computes processing_s in SQL, which each database says its own way.
    url = database_url
    if dialect == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}"
        upgrade(url)

    async def go() -> Any:
        db = Database(url, pool_size=2)
        try:
            started = utcnow() - timedelta(seconds=90)
            task = Task(
                id=str(uuid.uuid4()), workflow="w", workflow_version=1, user_id="u",
                status=TaskStatus.RUNNING, input={}, outputs=[], audio_s=0.0,
                created_at=started, started_at=started,
            )  # fmt: skip
            await insert_task(db, task)
            first = await finish_task(db, task.id, TaskStatus.SUCCEEDED, audio_s=2.0)
            again = await finish_task(db, task.id, TaskStatus.FAILED)
            return first, again, await get_task(db, task.id)
        finally:
            await db.dispose()

    first, again, row = asyncio.run(go())
    assert (first, again) == (True, False)
    assert row.status == TaskStatus.SUCCEEDED
    assert row.processing_s == pytest.approx(90, abs=5)
    assert row.finished_at is not None
