"""The embedded broker's prefetch for generation queues: generation messages waiting for the
batcher never take every worker thread, so the other stages keep running."""

from __future__ import annotations

import threading
import time

import dramatiq

from aimarket.broker import InProcessBroker


def test_generation_messages_leave_threads_for_the_other_stages() -> None:
    broker = InProcessBroker(generation_prefetch=1, middleware=[])
    release = threading.Event()
    holding: list[int] = []
    done: list[str] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name="musicgen", actor_name="gen")
    def generate(i: int) -> None:
        with lock:
            holding.append(i)
        release.wait(10)  # a generation waiting for its batch

    @dramatiq.actor(broker=broker, queue_name="default", actor_name="store")
    def store(name: str) -> None:
        done.append(name)

    worker = dramatiq.Worker(broker, worker_threads=3, worker_timeout=100)
    worker.start()
    try:
        for i in range(3):
            generate.send(i)
        time.sleep(0.5)
        store.send("a finished task's last stage")
        deadline = time.monotonic() + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
        # One generation taken at a time: two threads stayed free, and the store ran at once
        # (with the common prefetch, all three threads would be waiting on generations).
        assert holding == [0]
        assert done == ["a finished task's last stage"]
        release.set()
        broker.join("musicgen", timeout=10_000)
        assert sorted(holding) == [0, 1, 2]
    finally:
        release.set()
        worker.stop()
