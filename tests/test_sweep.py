"""The sweep on the real services (the admin stack of tests/conftest.py, shared with
tests/test_admin.py: API + worker on Postgres, Redis, RabbitMQ) and in embedded mode: a task
lost between the API's commit and its publish is resumed and succeeds; a task past its
deadline ends `failed` `timeout` and its client is told; a task still stuck after its resume
ends `stuck`; a task whose next message waits in a queue is left alone; one sweep at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tasks.sweep import LOCK_KEY, RESUMED_KEY, RedisMarks
from tests.conftest import ADMIN_TOKEN, TOKEN, AdminStack, Api, Receiver, embedded_env, serve, stop
from tests.support import insert_task, runs, submit, wait_for_status

# The admin stack (one per session, shared with tests/test_admin.py) and its clients, `admin`
# and `market`, are fixtures of tests/conftest.py.

#: Older than STUCK_AFTER_S (900 s by default), younger than TASK_DEADLINE_S (an hour).
STALE_S = 1200


def state(env: dict[str, str]) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=6379, db=int(env["REDIS_DB_NAME"]))


def sweep(admin: httpx.Client) -> dict[str, Any]:
    response = admin.post("/v1/admin/sweep")
    assert response.status_code == 200, response.text
    report = dict(response.json())
    assert report["ran"] is True
    return report


def actions_for(report: dict[str, Any], task_id: str) -> list[str]:
    return [a["action"] for a in report["actions"] if a["task_id"] == task_id]


@pytest.mark.parametrize("workflow", ["dag-join", "pipe-echo"])
def test_task_lost_between_commit_and_publish_is_resumed(
    admin: httpx.Client,
    market: httpx.Client,
    admin_stack: AdminStack,
    receiver: Receiver,
    workflow: str,
) -> None:
    task_id = insert_task(admin_stack.database_url, workflow, STALE_S, receiver.url)
    report = sweep(admin)
    assert actions_for(report, task_id) == ["resumed"], report
    assert wait_for_status(receiver, task_id, "succeeded")["task_id"] == task_id
    assert market.get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded"
    assert actions_for(sweep(admin), task_id) == []  # ended: nothing more to do


def test_young_task_without_work_is_left_alone(
    admin: httpx.Client, admin_stack: AdminStack, receiver: Receiver
) -> None:
    task_id = insert_task(admin_stack.database_url, "dag-join", 60, receiver.url)
    assert actions_for(sweep(admin), task_id) == []
    _cancel(admin_stack, task_id)


def test_task_past_its_deadline_ends_failed_timeout(
    admin: httpx.Client, market: httpx.Client, admin_stack: AdminStack, receiver: Receiver
) -> None:
    """dag-deadline's deadline is 2 s and its first stage sleeps 6 s: the sweep ends it while
    the stage runs, marks it cancelled for a running generation, and tells the client; the
    stage after never runs."""
    task_id = submit(market, receiver, "dag-deadline", seconds=6)
    deadline = time.monotonic() + 30
    while runs(admin_stack.env, task_id, "slow") < 1:
        assert time.monotonic() < deadline, admin_stack.output()
        time.sleep(0.1)
    assert actions_for(sweep(admin), task_id) == []  # running, and within its deadline
    time.sleep(2.2)
    report = sweep(admin)
    assert actions_for(report, task_id) == ["timeout"], report
    told = wait_for_status(receiver, task_id, "failed", timeout=20)
    assert told["error"]["code"] == "timeout"
    task = market.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "failed"
    assert task["error"]["code"] == "timeout"
    assert state(admin_stack.env).exists(f"aimarket:cancel:{task_id}")
    time.sleep(5)  # the slow stage ends; nothing runs after it, nobody is told twice
    assert runs(admin_stack.env, task_id, "after") == 0
    assert market.get(f"/v1/tasks/{task_id}").json()["status"] == "failed"
    assert [c["status"] for c in receiver.calls if c.get("task_id") == task_id] == ["failed"]


def test_task_stuck_after_its_resume_ends_failed_stuck(
    admin: httpx.Client, market: httpx.Client, admin_stack: AdminStack, receiver: Receiver
) -> None:
    task_id = insert_task(admin_stack.database_url, "dag-join", STALE_S, receiver.url)
    # Resumed STALE_S ago (as a previous sweep would have), and nothing happened since.
    state(admin_stack.env).set(RESUMED_KEY.format(task_id), str(time.time() - STALE_S))
    report = sweep(admin)
    assert actions_for(report, task_id) == ["stuck"], report
    told = wait_for_status(receiver, task_id, "failed", timeout=20)
    assert told["error"]["code"] == "stuck"
    assert market.get(f"/v1/tasks/{task_id}").json()["error"]["code"] == "stuck"


def test_task_waiting_in_a_busy_queue_is_not_resumed(
    admin: httpx.Client, market: httpx.Client, admin_stack: AdminStack, receiver: Receiver
) -> None:
    """A queued task whose first queue holds ready messages is waiting its turn behind them,
    not lost: it is not resumed (a resume would only add a duplicate behind the others)."""
    waiting = submit(market, receiver, "pipe-parked")  # its message waits in PARKED
    lost = insert_task(admin_stack.database_url, "pipe-parked", STALE_S, receiver.url)
    try:
        report = sweep(admin)
        assert actions_for(report, lost) == [], report
        assert actions_for(report, waiting) == []
    finally:
        for task_id in (waiting, lost):
            _cancel(admin_stack, task_id)


def test_one_sweep_at_a_time(
    admin: httpx.Client, admin_stack: AdminStack, receiver: Receiver
) -> None:
    """While another process holds the sweep's lock, a sweep waits, then answers 409 and
    touches nothing; once the lock is free it acts."""
    task_id = insert_task(admin_stack.database_url, "dag-join", 7200, receiver.url)
    r = state(admin_stack.env)
    assert r.set(LOCK_KEY, "another-process", nx=True, ex=30)
    try:
        busy = admin.post("/v1/admin/sweep")
        assert busy.status_code == 409, busy.text
        assert busy.json()["code"] == "sweep_running"
        assert admin.get("/v1/admin/dead-letters").status_code == 200
    finally:
        r.delete(LOCK_KEY)
    report = sweep(admin)
    assert actions_for(report, task_id) == ["timeout"], report
    wait_for_status(receiver, task_id, "failed", timeout=20)


def test_redis_lock_has_one_holder(admin_stack: AdminStack) -> None:
    """Two processes' marks racing for the lock: one wins; after release, the other can."""

    async def race() -> None:
        url = f"redis://127.0.0.1:6379/{admin_stack.env['REDIS_DB_NAME']}"
        a, b = RedisMarks(url), RedisMarks(url)
        try:
            for _ in range(100):  # let a sweep of the session's API end first
                if not await a.redis.exists(LOCK_KEY):
                    break
                await asyncio.sleep(0.05)
            tokens = await asyncio.gather(*(m.acquire(30) for m in (a, b, a, b)))
            won = [t for t in tokens if t is not None]
            assert len(won) == 1, tokens
            holder = a if tokens[0] or tokens[2] else b
            other = b if holder is a else a
            await other.release("not-its-token")  # a stale release frees nothing
            assert await other.acquire(30) is None
            await holder.release(won[0])
            token = await other.acquire(30)
            assert token is not None
            await other.release(token)
        finally:
            await a.close()
            await b.close()

    asyncio.run(race())


def test_a_task_ended_without_its_callback_is_told(
    admin: httpx.Client, market: httpx.Client, admin_stack: AdminStack, receiver: Receiver
) -> None:
    """An API that cancelled a task (the row committed) and died before it queued the callback
    leaves a task ended with no try of its callback on record: the sweep queues it, once."""
    task_id = insert_task(admin_stack.database_url, "dag-join", 700, receiver.url)
    _end(admin_stack.database_url, task_id, "cancelled", ended_s_ago=600)
    report = sweep(admin)
    assert actions_for(report, task_id) == ["told"], report
    assert wait_for_status(receiver, task_id, "cancelled", timeout=20)["task_id"] == task_id
    deadline = time.monotonic() + 20
    while not market.get(f"/v1/tasks/{task_id}/callbacks").json()["attempts"]:
        assert time.monotonic() < deadline, "the try was not recorded"
        time.sleep(0.2)
    assert actions_for(sweep(admin), task_id) == []  # its try is on record now
    # A task whose callback was tried is never told again; nor one that ended just now.
    recent = insert_task(admin_stack.database_url, "dag-join", 60, receiver.url)
    _end(admin_stack.database_url, recent, "cancelled", ended_s_ago=5)
    assert actions_for(sweep(admin), recent) == []


def _end(database_url: str, task_id: str, status: str, ended_s_ago: float) -> None:
    """Write the ending of a task as the API's cancel would, nothing else."""
    from sqlalchemy import update

    from db.engine import Database
    from db.models import Task

    async def run() -> None:
        db = Database(database_url)
        try:
            async with db.session() as session, session.begin():
                await session.execute(
                    update(Task)
                    .where(Task.id == task_id)
                    .values(
                        status=status,
                        finished_at=datetime.fromtimestamp(time.time() - ended_s_ago, UTC),
                        error_code="cancelled",
                        error_message="cancelled",
                    )
                )
        finally:
            await db.dispose()

    asyncio.run(run())


def _cancel(stack: AdminStack, task_id: str) -> None:
    """End a test's leftover task, so later sweeps do not act on it."""
    httpx.post(
        f"{stack.api.url}/v1/tasks/{task_id}/cancel",
        headers={"authorization": f"Bearer {TOKEN}"},
    )


# --- Embedded mode -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_sweep(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> Iterator[tuple[Api, Path]]:
    workdir = tmp_path_factory.mktemp("embedded-sweep")
    env = embedded_env(workdir / "data", tiny_models, extra_workflows, receiver)
    env |= {"ADMIN_TOKEN": ADMIN_TOKEN, "SWEEP_INTERVAL_S": "3600"}
    api = serve(env, workdir)
    yield api, workdir / "data" / "aimarket.db"
    stop(api.proc)


def test_embedded_sweep_ends_a_late_task_and_resumes_a_lost_one(
    embedded_sweep: tuple[Api, Path], receiver: Receiver
) -> None:
    api, sqlite_file = embedded_sweep
    url = f"sqlite+aiosqlite:///{sqlite_file}"
    late = insert_task(url, "dag-join", 7200, receiver.url)
    lost = insert_task(url, "pipe-echo", STALE_S, receiver.url)
    with httpx.Client(
        base_url=api.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        report = sweep(client)
    assert actions_for(report, late) == ["timeout"], report
    assert actions_for(report, lost) == ["resumed"], report
    assert wait_for_status(receiver, late, "failed")["error"]["code"] == "timeout"
    wait_for_status(receiver, lost, "succeeded")
