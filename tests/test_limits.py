"""Per-user rate limit and quota of active tasks (429) and queue back-pressure (503), with
Retry-After, against `aimarket serve` processes with the limits on: two API processes sharing
the real Redis, real RabbitMQ queues, and the embedded mode. No worker consumes the services'
queues here (each group of APIs has its own vhost), so tasks stay queued: that is what fills a
quota and a queue."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import redis

from api.limits import ACTIVE_RETRY_S, DEPTH_TTL_S, MemoryBackend, RedisBackend
from tests.conftest import (
    BIN,
    REDIS,
    TOKEN,
    Api,
    Proc,
    Receiver,
    amqp,
    embedded_env,
    free_port,
    start,
    stop,
)
from tests.support import rows_for

MUSIC = {"workflow": "text2music", "input": {"prompt": "calm piano", "duration": 5}}
SOUND = {"workflow": "text2sound", "input": {"prompt": "rain", "duration": 2}}


def new_user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def own_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of their own for a group of APIs: no worker consumes it."""
    vhost = f"aimarket-limits-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


def serve_all(envs: list[dict[str, str]], workdir: Path) -> list[Api]:
    """`aimarket serve` once per environment, started together, once all are ready."""
    procs: list[tuple[str, Proc]] = []
    for i, env in enumerate(envs):
        port = free_port()
        folder = workdir / f"api{i}"
        folder.mkdir()
        args = [str(BIN / "aimarket"), "serve", "--port", str(port)]
        proc = start(args, env, folder / "api.log", folder)
        procs.append((f"http://127.0.0.1:{port}", proc))
    deadline = time.monotonic() + 120
    for url, proc in procs:
        while True:
            if proc.proc.poll() is not None:
                pytest.fail("an API exited:\n" + proc.output())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("an API did not become ready:\n" + proc.output())
            time.sleep(0.2)
    return [Api(url, proc) for url, proc in procs]


@contextlib.contextmanager
def apis(
    env: dict[str, str], workdir: Path, count: int, **settings: str
) -> Iterator[list[httpx.Client]]:
    """``count`` API processes of one deployment with ``settings`` on top of ``env``, as
    clients holding the token."""
    started = serve_all([{**env, **settings}] * count, workdir)
    try:
        with contextlib.ExitStack() as stack:
            yield [
                stack.enter_context(
                    httpx.Client(
                        base_url=a.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
                    )
                )
                for a in started
            ]
    finally:
        for a in started:
            stop(a.proc)


@pytest.fixture(scope="module")
def limited_env(service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    with own_vhost() as vhost:
        yield {**service_env, "RABBITMQ_VHOST": vhost}


@pytest.fixture(scope="module")
def rate_pair(
    limited_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[httpx.Client]]:
    """Two API processes; a user may submit 30 tasks a minute (one per 2 s), 2 at once."""
    workdir = tmp_path_factory.mktemp("rate")
    with apis(limited_env, workdir, 2, RATE_LIMIT_PER_MINUTE="30", RATE_LIMIT_BURST="2") as c:
        yield c


@pytest.fixture(scope="module")
def quota_pair(
    limited_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[httpx.Client]]:
    """Two API processes; a user may have 2 tasks queued or running."""
    workdir = tmp_path_factory.mktemp("quota")
    with apis(limited_env, workdir, 2, MAX_ACTIVE_TASKS_PER_USER="2") as c:
        yield c


@pytest.fixture(scope="module")
def redis_client(redis_db: int) -> Iterator[redis.Redis]:
    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=redis_db)
    yield client
    client.close()


def post(client: httpx.Client, user: str, body: dict[str, Any] = MUSIC, **headers: str) -> Any:
    return client.post("/v1/tasks", json={**body, "user_id": user}, headers=headers)


def refusals(client: httpx.Client, workflow: str, reason: str) -> float:
    """``aimarket_tasks_refused_total`` of this API process for the workflow and reason."""
    labels = {f'workflow="{workflow}"', f'reason="{reason}"'}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("aimarket_tasks_refused_total{"):
            names, value = line.split("{", 1)[1].rsplit("} ", 1)
            if set(names.split(",")) == labels:
                return float(value)
    return 0.0


def assert_refused(answer: httpx.Response, status: int, code: str) -> int:
    """The refusal's Retry-After, once its status, code and header are checked."""
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code
    assert answer.json()["message"]
    retry_after = int(answer.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


# --- Rate limit ------------------------------------------------------------------------------


def test_rate_limit_is_shared_by_the_api_processes(
    rate_pair: list[httpx.Client], database_url: str, redis_client: redis.Redis
) -> None:
    a, b = rate_pair
    user = new_user("rate")
    assert post(a, user).status_code == 202
    assert post(b, user).status_code == 202
    # The burst of 2 is spent, through either process.
    refused = post(a, user)
    wait = assert_refused(refused, 429, "rate_limited")
    assert wait <= 2  # one submission every 2 s
    assert rows_for(database_url, user) == 2  # the refused request stored nothing
    assert 0 < redis_client.pttl(f"aimarket:rate:{user}") <= 4000
    assert post(b, user).status_code == 429

    time.sleep(wait)
    assert post(b, user).status_code == 202
    # That was the one submission the wait earned.
    assert post(a, user).status_code == 429
    assert rows_for(database_url, user) == 3

    assert refusals(a, "text2music", "rate_limited") == 2  # counted by the process refusing


def test_invalid_requests_spend_no_rate_budget(
    rate_pair: list[httpx.Client], database_url: str
) -> None:
    a, b = rate_pair
    user = new_user("rate-422")
    for _ in range(3):
        bad = a.post("/v1/tasks", json={**MUSIC, "user_id": user, "input": {"prompt": ""}})
        assert bad.status_code == 422, bad.text
    assert post(a, user).status_code == 202
    assert post(b, user).status_code == 202
    assert rows_for(database_url, user) == 2


def test_a_replay_is_not_refused_by_the_rate_limit(rate_pair: list[httpx.Client]) -> None:
    a, b = rate_pair
    user, key = new_user("rate-replay"), str(uuid.uuid4())
    first = post(a, user, **{"idempotency-key": key})
    assert first.status_code == 202
    assert post(b, user).status_code == 202
    # The budget is spent, but a retry of the first request (after a timeout, say) is answered.
    again = post(b, user, **{"idempotency-key": key})
    assert again.status_code == 200, again.text
    assert again.json()["task_id"] == first.json()["task_id"]
    assert_refused(post(a, user, **{"idempotency-key": str(uuid.uuid4())}), 429, "rate_limited")


def test_the_refusals_are_documented(rate_pair: list[httpx.Client]) -> None:
    responses = rate_pair[0].get("/schema/openapi.json").json()["paths"]["/v1/tasks"]["post"]
    assert {"429", "503"} <= set(responses["responses"])
    assert "Retry-After" in responses["responses"]["429"]["description"]


# --- Quota of active tasks -------------------------------------------------------------------


def test_quota_is_shared_and_freed_when_a_task_ends(
    quota_pair: list[httpx.Client], database_url: str, redis_client: redis.Redis
) -> None:
    a, b = quota_pair
    user = new_user("quota")
    first, second = post(a, user), post(b, user)
    assert (first.status_code, second.status_code) == (202, 202)
    ids = {first.json()["task_id"], second.json()["task_id"]}

    for client in (a, b):
        wait = assert_refused(post(client, user), 429, "too_many_active_tasks")
        assert wait == ACTIVE_RETRY_S
    assert rows_for(database_url, user) == 2
    key = f"aimarket:active:{user}"
    assert {m.decode() for m in redis_client.zrange(key, 0, -1)} == ids
    assert redis_client.ttl(key) > 0

    # Ending a task (here by cancelling it) frees its slot, on the other process too: no hook
    # removed it from the set; the refusal path finds it ended in the database.
    assert a.post(f"/v1/tasks/{first.json()['task_id']}/cancel").status_code == 202
    third = post(b, user)
    assert third.status_code == 202, third.text
    assert {m.decode() for m in redis_client.zrange(key, 0, -1)} == {
        second.json()["task_id"],
        third.json()["task_id"],
    }
    assert_refused(post(a, user), 429, "too_many_active_tasks")
    assert rows_for(database_url, user) == 3
    # Another user is not affected.
    assert post(a, new_user("quota-other")).status_code == 202


def test_a_replay_is_not_refused_by_the_quota(
    quota_pair: list[httpx.Client], database_url: str
) -> None:
    a, b = quota_pair
    user, key = new_user("quota-replay"), str(uuid.uuid4())
    first = post(a, user, **{"idempotency-key": key})
    assert first.status_code == 202
    assert post(b, user).status_code == 202
    again = post(b, user, **{"idempotency-key": key})
    assert again.status_code == 200, again.text
    assert again.json()["task_id"] == first.json()["task_id"]
    assert_refused(post(a, user), 429, "too_many_active_tasks")
    assert rows_for(database_url, user) == 2


def test_duplicates_that_lose_the_insert_give_their_slot_back(
    quota_pair: list[httpx.Client], database_url: str, redis_client: redis.Redis
) -> None:
    """Concurrent submissions with one key: those that pass the limits but lose the insert to
    the first must not keep a slot (the user could then submit nothing more)."""
    user, key = new_user("quota-race"), str(uuid.uuid4())
    n = 6
    barrier = threading.Barrier(n)
    answers: list[int] = [0] * n

    def one(i: int) -> None:
        client = quota_pair[i % 2]
        barrier.wait()
        answers[i] = post(client, user, **{"idempotency-key": key}).status_code

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One made the task; the others were replays, or refused while it was being stored.
    assert answers.count(202) == 1, answers
    assert set(answers) <= {200, 202, 429}, answers
    assert rows_for(database_url, user) == 1
    assert redis_client.zcard(f"aimarket:active:{user}") == 1
    assert post(quota_pair[0], user).status_code == 202


# --- Back-pressure ---------------------------------------------------------------------------


def fill(vhost: str, queue: str, count: int) -> None:
    """Put ``count`` messages in ``queue`` as Dramatiq declares it (no worker takes them)."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:5672/{vhost}", middleware=[])
    try:
        broker.declare_queue(queue)
        for _ in range(count):
            broker.enqueue(dramatiq.Message(queue, "test.nothing", (), {}, {}))
    finally:
        broker.close()


def purge(vhost: str, queue: str) -> None:
    with amqp(vhost) as connection:
        connection.channel().queue_purge(queue)


def test_a_full_queue_refuses_the_workflows_that_use_it(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, database_url: str
) -> None:
    with own_vhost() as vhost:
        env = {**service_env, "RABBITMQ_VHOST": vhost}
        with apis(env, tmp_path_factory.mktemp("depth"), 1, MAX_QUEUE_DEPTH="3") as (client,):
            fill(vhost, "musicgen", 4)  # one over the bound
            user = new_user("depth")
            refused = post(client, user)
            wait = assert_refused(refused, 503, "queue_full")
            assert 20 <= wait <= 40
            assert "musicgen" in refused.json()["message"]
            assert rows_for(database_url, user) == 0
            # text2sound never reaches the musicgen queue: it is still accepted.
            assert post(client, user, SOUND).status_code == 202
            assert refusals(client, "text2music", "queue_full") == 1

            # Once the queue drains, the next reading of its depth lets tasks in again.
            purge(vhost, "musicgen")
            deadline = time.monotonic() + DEPTH_TTL_S * 5
            while (answer := post(client, user)).status_code == 503:
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.5)
            assert answer.status_code == 202, answer.text


# --- Embedded mode ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_limited(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> Iterator[httpx.Client]:
    """One `aimarket serve` with nothing configured but two worker threads: a user may have
    one active task, and a queue may hold 2 waiting messages."""
    workdir = tmp_path_factory.mktemp("embedded-limits")
    env = embedded_env(workdir / "data", tiny_models, extra_workflows, receiver)
    limits = {"MAX_ACTIVE_TASKS_PER_USER": "1", "MAX_QUEUE_DEPTH": "2"}
    with apis(env, workdir, 1, EMBEDDED_WORKER_THREADS="2", **limits) as (c,):
        yield c


def slow(seconds: int) -> dict[str, Any]:
    """A task that holds a worker thread for ``seconds`` (tests/data/dag/dag-cancel.yaml)."""
    return {"workflow": "dag-cancel", "input": {"seconds": seconds}}


def wait_until_ended(client: httpx.Client, task_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/tasks/{task_id}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"task {task_id} did not end"
        time.sleep(0.3)


def test_embedded_quota_is_freed_when_a_task_finishes(embedded_limited: httpx.Client) -> None:
    c = embedded_limited
    user = new_user("emb-quota")
    first = post(c, user, slow(1))
    assert first.status_code == 202, first.text
    assert_refused(post(c, user, slow(1)), 429, "too_many_active_tasks")
    tasks = c.get("/v1/tasks", params={"user_id": user}).json()["tasks"]
    assert [t["task_id"] for t in tasks] == [first.json()["task_id"]]

    wait_until_ended(c, first.json()["task_id"])
    assert c.get(f"/v1/tasks/{first.json()['task_id']}").json()["status"] == "succeeded"
    second = post(c, user, slow(1))
    assert second.status_code == 202, second.text
    wait_until_ended(c, second.json()["task_id"])


def test_embedded_back_pressure(embedded_limited: httpx.Client) -> None:
    """Two worker threads take a message each and prefetch two more; the rest wait in the
    in-process queue, whose depth is the one that counts."""
    c = embedded_limited
    accepted: list[str] = []
    refused: httpx.Response | None = None
    for _ in range(20):
        answer = post(c, new_user("emb-depth"), slow(2))
        if answer.status_code == 503:
            refused = answer
            break
        assert answer.status_code == 202, answer.text
        accepted.append(answer.json()["task_id"])
        time.sleep(0.2)
    assert refused is not None, f"{len(accepted)} tasks accepted, none refused"
    assert_refused(refused, 503, "queue_full")
    assert len(accepted) > 2

    for task_id in accepted:
        wait_until_ended(c, task_id, timeout=120)
    time.sleep(DEPTH_TTL_S)
    assert post(c, new_user("emb-depth"), slow(0)).status_code == 202


# --- The counters themselves -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_memory_rate_limit_is_gcra() -> None:
    asyncio.run(memory_rate_limit())


async def memory_rate_limit() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    # 3 at once, then one per 2 s.
    assert [await backend.take("u", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await backend.take("u", 2.0, 3) == pytest.approx(2.0)
    clock.now += 1.5
    assert await backend.take("u", 2.0, 3) == pytest.approx(0.5)
    clock.now += 0.5
    assert await backend.take("u", 2.0, 3) == 0.0
    assert await backend.take("u", 2.0, 3) == pytest.approx(2.0)
    assert await backend.take("other", 2.0, 3) == 0.0
    # Idle for long enough, the whole burst is back.
    clock.now += 60
    assert [await backend.take("u", 2.0, 3) for _ in range(4)][-2:] == [0.0, pytest.approx(2.0)]


def test_memory_quota_entries_expire() -> None:
    asyncio.run(memory_quota())


async def memory_quota() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    assert await backend.acquire("u", "t1", 2, ttl_s=100) is None
    clock.now += 10
    assert await backend.acquire("u", "t2", 2, ttl_s=100) is None
    full = await backend.acquire("u", "t3", 2, ttl_s=100)
    assert full == {"t1": pytest.approx(10), "t2": pytest.approx(0)}
    await backend.release("u", "t2")
    assert await backend.acquire("u", "t3", 2, ttl_s=100) is None
    clock.now += 95  # t1 has expired (a leak cannot hold a slot for good)
    assert await backend.acquire("u", "t4", 2, ttl_s=100) is None
    assert await backend.acquire("u", "t5", 2, ttl_s=100) is not None


def test_redis_counters_match(redis_db: int) -> None:
    asyncio.run(redis_counters(redis_db))


async def redis_counters(redis_db: int) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=REDIS[0], port=REDIS[1], db=redis_db)
    try:
        backend = RedisBackend(client)
        user = new_user("unit")
        assert [await backend.take(user, 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert await backend.take(user, 2.0, 3) == pytest.approx(2.0, abs=0.1)

        assert await backend.acquire(user, "t1", 2, ttl_s=100) is None
        assert await backend.acquire(user, "t2", 2, ttl_s=100) is None
        full = await backend.acquire(user, "t3", 2, ttl_s=100)
        assert full is not None
        assert set(full) == {"t1", "t2"}
        assert all(0 <= age < 5 for age in full.values())
        await backend.release(user, "t1")
        assert await backend.acquire(user, "t3", 2, ttl_s=100) is None
        # Entries past their expiry are dropped by the next acquire.
        assert await backend.acquire(user, "t4", 3, ttl_s=0.05) is None
        await asyncio.sleep(0.1)
        assert await backend.acquire(user, "t5", 3, ttl_s=100) is None
        assert await backend.acquire(user, "t6", 3, ttl_s=100) is not None
    finally:
        await client.aclose()
