"""POST /v1/tasks/{id}/cancel on the real services (API + worker on Postgres, Redis and
RabbitMQ), and the two places a running generation stops: the progress reporter and the
batcher."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import redis

from actors.batching import Batcher, Request
from actors.progress import MIN_INTERVAL_S, ProgressReporter, TaskCancelled
from core.errors import StageError
from core.memory_state import MemoryState
from tests.conftest import Proc, Receiver


def submit(client: httpx.Client, receiver: Receiver, seconds: int) -> str:
    response = client.post(
        "/v1/tasks",
        json={
            "workflow": "dag-cancel",
            "user_id": "cancel",
            "input": {"seconds": seconds},
            "callback_url": receiver.url,
        },
    )
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def runs(service_env: dict[str, str], task_id: str, stage_id: str) -> int:
    r = redis.Redis(host="127.0.0.1", port=6379, db=int(service_env["REDIS_DB_NAME"]))
    return int(r.get(f"aimarket:test:runs:{task_id}:{stage_id}") or 0)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def callbacks(receiver: Receiver, task_id: str) -> list[dict[str, Any]]:
    return [c for c in receiver.calls if c.get("task_id") == task_id]


# --- The endpoint, on the real stack -----------------------------------------------------------


def test_unknown_task_is_404(client: httpx.Client, worker: Proc) -> None:
    response = client.post(f"/v1/tasks/{uuid.uuid4()}/cancel")
    assert response.status_code == 404
    assert client.post("/v1/tasks/not-a-uuid/cancel").status_code == 404


def test_cancel_needs_the_token(api_url: str) -> None:
    assert httpx.post(f"{api_url}/v1/tasks/{uuid.uuid4()}/cancel").status_code == 401


def test_cancel_while_a_stage_runs(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    """The task ends `cancelled` at once and the client is told; the running stage finishes
    (a plain asyncio sleep), but the stage after it never runs and nobody calls back again."""
    task_id = submit(client, receiver, seconds=4)
    wait_until(lambda: runs(service_env, task_id, "slow") == 1, 30, "the slow stage")
    started = time.monotonic()
    response = client.post(f"/v1/tasks/{task_id}/cancel")
    assert response.status_code == 202, response.text
    view = response.json()
    assert view["task_id"] == task_id
    assert view["status"] == "cancelled"
    assert view["error"]["code"] == "cancelled"
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] == "cancelled"

    called = receiver.wait_for(task_id, timeout=10)
    assert called["status"] == "cancelled"
    assert time.monotonic() - started < 3.5  # told before the slow stage even ended

    # The slow stage ends on its own; nothing runs after it.
    wait_until(
        lambda: (
            client.get(f"/v1/tasks/{task_id}").json()["stages"]["slow"]["status"] == "succeeded"
        ),
        30,
        "the slow stage to end",
    )
    time.sleep(1.5)
    task = client.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "cancelled", worker.output()
    assert "after" not in task["stages"]
    assert runs(service_env, task_id, "after") == 0
    assert len(callbacks(receiver, task_id)) == 1

    again = client.post(f"/v1/tasks/{task_id}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "already_finished"


def test_a_task_cancelled_at_once_runs_nothing_after(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    """Cancelled right after submission: usually still queued (its slow stage then never
    starts); if the worker was quicker, the slow stage ends on its own. Either way the stage
    after never runs and the client is told once, `cancelled`."""
    queued = submit(client, receiver, seconds=2)
    response = client.post(f"/v1/tasks/{queued}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancelled"
    assert receiver.wait_for(queued, timeout=10)["status"] == "cancelled"
    time.sleep(4.0)  # longer than the slow stage, had it started
    task = client.get(f"/v1/tasks/{queued}").json()
    assert task["status"] == "cancelled", worker.output()
    if runs(service_env, queued, "slow") == 0:  # queued (or not even queued): never started
        assert task["stages"].get("slow", {}).get("status") in (None, "queued")
    assert runs(service_env, queued, "after") == 0
    assert len(callbacks(receiver, queued)) == 1


def test_a_cancelled_pipeline_runs_no_stage_after_the_running_one(
    client: httpx.Client, receiver: Receiver, service_env: dict[str, str], worker: Proc
) -> None:
    """A straight workflow runs as a Dramatiq pipeline, where each finished stage queues the
    next: once the task is cancelled, the next stage must drop the run (no stage, no second
    callback), although the running one finished normally."""
    response = client.post(
        "/v1/tasks",
        json={"workflow": "pipeline-cancel", "user_id": "cancel", "callback_url": receiver.url},
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    wait_until(lambda: runs(service_env, task_id, "slow") == 1, 30, "the slow stage")
    assert client.post(f"/v1/tasks/{task_id}/cancel").status_code == 202
    assert receiver.wait_for(task_id, timeout=10)["status"] == "cancelled"
    time.sleep(6.0)  # the slow stage (5 s) has ended, and its successor would have run
    assert runs(service_env, task_id, "after") == 0, worker.output()
    task = client.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "cancelled"
    assert len(callbacks(receiver, task_id)) == 1


def test_a_finished_task_cannot_be_cancelled(
    client: httpx.Client, receiver: Receiver, worker: Proc
) -> None:
    task_id = submit(client, receiver, seconds=0)
    assert receiver.wait_for(task_id, timeout=60)["status"] == "succeeded", worker.output()
    response = client.post(f"/v1/tasks/{task_id}/cancel")
    assert response.status_code == 409
    assert response.json()["code"] == "already_finished"
    assert client.get(f"/v1/tasks/{task_id}").json()["status"] == "succeeded"
    assert len(callbacks(receiver, task_id)) == 1


# --- Stopping a running generation ------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop on its own thread, as a worker's actors have."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def decode(progress: ProgressReporter, steps: int) -> None:
    """A decoding loop: one progress call per step, from this (the model's) thread."""
    for step in range(2, steps):
        progress(step, steps)
        time.sleep(0.01)


def test_a_cancelled_task_stops_at_the_next_decoding_step(
    loop: asyncio.AbstractEventLoop,
) -> None:
    state = MemoryState(ttl_s=60)
    reporter = ProgressReporter(state, "t1", "generate", loop)
    reporter(1, 1000)  # publishes progress and reads the cancel mark: not cancelled
    asyncio.run_coroutine_threadsafe(state.set_cancelled("t1"), loop).result(timeout=5)
    assert not reporter.cancelled  # the mark is read at most every MIN_INTERVAL_S
    started = time.monotonic()
    with pytest.raises(TaskCancelled) as raised:
        decode(reporter, steps=1000)
    assert time.monotonic() - started < MIN_INTERVAL_S + 0.5
    assert isinstance(raised.value, StageError)
    assert raised.value.code == "cancelled"
    assert reporter.cancelled
    progress = asyncio.run_coroutine_threadsafe(state.get("t1"), loop).result(timeout=5)
    assert progress["progress"]["stage"] == "generate"
    # Other tasks are not affected.
    other = ProgressReporter(state, "t2", "generate", loop)
    other(1, 10)
    time.sleep(0.1)
    other(10, 10)
    assert not other.cancelled


def test_the_flag_set_stops_at_the_very_next_step(loop: asyncio.AbstractEventLoop) -> None:
    reporter = ProgressReporter(MemoryState(ttl_s=60), "t3", "generate", loop)
    reporter(1, 10)
    reporter.cancel()
    with pytest.raises(TaskCancelled):
        reporter(2, 10)


RATE = 100


class SteppingModel:
    """A fake model that reports progress at each of its steps; clips hold the prompt's
    number, so a mix-up shows."""

    def __init__(self, steps: int = 5, delay: float = 0.01) -> None:
        self.calls: list[list[str]] = []
        self.steps, self.delay = steps, delay
        self.lock = threading.Lock()

    def __call__(
        self,
        kind: str,
        model: str,
        prompts: list[str],
        duration: float,
        device: str,
        params: Mapping[str, Any],
        progress: Any,
    ) -> tuple[npt.NDArray[np.float32], int]:
        with self.lock:
            self.calls.append(list(prompts))
        for step in range(1, self.steps + 1):
            time.sleep(self.delay)
            if progress is not None:
                progress(step, self.steps)
        n = round(duration * RATE)
        out = np.stack([np.full((1, n), float(p.split("-")[-1])) for p in prompts])
        return out.astype(np.float32), RATE


def test_a_cancelled_request_does_not_fail_its_batch_mates() -> None:
    model = SteppingModel()
    batcher = Batcher(model, max_batch=4, max_wait_s=0.2)
    steps: list[int] = []

    def cancelled_at_step_3(done: int, total: int) -> None:
        steps.append(done)
        if done >= 3:
            raise TaskCancelled("t-2")

    requests = [
        Request(kind="musicgen", model="m", prompt="p-1", duration=1.0),
        Request(
            kind="musicgen", model="m", prompt="p-2", duration=1.0, progress=cancelled_at_step_3
        ),
        Request(kind="musicgen", model="m", prompt="p-3", duration=1.0),
    ]
    futures = [batcher.submit(r) for r in requests]
    first, third = futures[0].result(timeout=10), futures[2].result(timeout=10)
    assert np.all(first.samples == 1)
    assert np.all(third.samples == 3)
    with pytest.raises(TaskCancelled):
        futures[1].result(timeout=10)
    # One batch of three stopped at step 3; the two others ran again together, never p-2.
    assert model.calls == [["p-1", "p-2", "p-3"], ["p-1", "p-3"]]
    assert steps == [1, 2, 3]
    assert first.batch_size == third.batch_size == 2
