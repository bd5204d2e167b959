"""The batcher with a fake model: results go to the right requests, failures stay with
their request, out-of-memory halves the batch, and the wait is bounded."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from actors.batching import Batcher, Clip, Request

RATE = 100


class FakeModel:
    """Each clip is filled with its prompt's number, so a mix-up shows."""

    def __init__(self, oom_above: int | None = None, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.oom_above = oom_above
        self.delay = delay
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
        time.sleep(self.delay)
        if self.oom_above is not None and len(prompts) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if "bad" in prompts:
            raise ValueError("this prompt breaks the model")
        if progress is not None:
            progress(len(prompts), len(prompts))
        n = round(duration * RATE)
        out = np.stack([np.full((1, n), float(p.split("-")[-1])) for p in prompts])
        return out.astype(np.float32), RATE


def submit_all(batcher: Batcher, requests: list[Request]) -> list[Future[Clip]]:
    return [batcher.submit(r) for r in requests]


def req(prompt: str, duration: float = 1.0, **kw: Any) -> Request:
    return Request(kind="musicgen", model="m", prompt=prompt, duration=duration, **kw)


def test_concurrent_requests_share_a_batch_and_get_their_own_clip() -> None:
    model = FakeModel(delay=0.05)
    batcher = Batcher(model, max_batch=4, max_wait_s=0.2)
    futures = submit_all(batcher, [req(f"p-{i}", duration=1.0 + i * 0.1) for i in range(4)])
    clips = [f.result(timeout=10) for f in futures]
    assert model.calls == [["p-0", "p-1", "p-2", "p-3"]]
    for i, clip in enumerate(clips):
        assert clip.batch_size == 4
        assert clip.samples.shape == (1, round((1.0 + i * 0.1) * RATE))  # trimmed to its own
        assert np.all(clip.samples == i)


def test_batch_size_is_bounded_and_the_rest_waits_for_the_next_batch() -> None:
    model = FakeModel(delay=0.05)
    batcher = Batcher(model, max_batch=2, max_wait_s=0.2)
    futures = submit_all(batcher, [req(f"p-{i}") for i in range(5)])
    assert [np.all(f.result(timeout=10).samples == i) for i, f in enumerate(futures)] == [True] * 5
    assert sorted(len(c) for c in model.calls) == [1, 2, 2]


def test_wait_is_bounded_when_alone() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch=8, max_wait_s=0.05)
    started = time.monotonic()
    batcher.submit(req("p-1")).result(timeout=5)
    assert time.monotonic() - started < 1.0
    assert model.calls == [["p-1"]]


def test_incompatible_requests_are_not_mixed() -> None:
    model = FakeModel(delay=0.05)
    batcher = Batcher(model, max_batch=8, max_wait_s=0.2, bucket_s=5)
    requests = [
        req("p-1", duration=2),
        req("p-2", duration=12),  # another duration bucket
        req("p-3", duration=3, params={"temperature": 0.5}),  # other sampling settings
        Request(kind="audiogen", model="m", prompt="p-4", duration=2),  # another model
        req("p-5", duration=4),  # joins p-1 (same bucket: padded to 4 s, trimmed back)
    ]
    clips = [f.result(timeout=10) for f in submit_all(batcher, requests)]
    assert sorted(sorted(c) for c in model.calls) == [["p-1", "p-5"], ["p-2"], ["p-3"], ["p-4"]]
    assert clips[0].samples.shape[-1] == 2 * RATE
    assert clips[4].samples.shape[-1] == 4 * RATE


def test_one_bad_request_does_not_fail_its_batch_mates() -> None:
    model = FakeModel(delay=0.05)
    batcher = Batcher(model, max_batch=4, max_wait_s=0.2)
    futures = submit_all(batcher, [req("p-1"), req("bad"), req("p-3")])
    assert np.all(futures[0].result(timeout=10).samples == 1)
    assert np.all(futures[2].result(timeout=10).samples == 3)
    with pytest.raises(ValueError, match="breaks the model"):
        futures[1].result(timeout=10)
    assert futures[0].result().batch_size == 1  # retried alone after the batch failed


def test_out_of_memory_halves_the_batch_and_retries_everyone() -> None:
    model = FakeModel(oom_above=2, delay=0.02)
    batcher = Batcher(model, max_batch=8, max_wait_s=0.2)
    futures = submit_all(batcher, [req(f"p-{i}") for i in range(8)])
    clips = [f.result(timeout=10) for f in futures]
    assert all(np.all(c.samples == i) for i, c in enumerate(clips))
    assert model.calls[0] == [f"p-{i}" for i in range(8)]  # the batch that ran out of memory
    assert max(batcher.batches) <= 2
    assert batcher.limit <= 3  # lowered, growing back one at a time


def test_seeded_requests_run_alone() -> None:
    model = FakeModel(delay=0.05)
    seeded_calls: list[int | None] = []

    def seeded(r: Request) -> Clip:
        seeded_calls.append(r.seed)
        return Clip(np.zeros((1, RATE), dtype=np.float32), RATE, 1)

    batcher = Batcher(model, max_batch=4, max_wait_s=0.2, seeded=seeded)
    futures = submit_all(batcher, [req("p-1", seed=7), req("p-2"), req("p-3", seed=8)])
    for f in futures:
        f.result(timeout=10)
    assert sorted(s for s in seeded_calls if s is not None) == [7, 8]
    assert model.calls == [["p-2"]]


def test_progress_reaches_every_request_of_a_batch() -> None:
    model = FakeModel(delay=0.05)
    batcher = Batcher(model, max_batch=3, max_wait_s=0.2)
    seen: list[str] = []
    futures = submit_all(
        batcher,
        [req(f"p-{i}", progress=lambda d, t, i=i: seen.append(f"{i}:{d}/{t}")) for i in range(3)],
    )
    for f in futures:
        f.result(timeout=10)
    assert sorted(seen) == ["0:3/3", "1:3/3", "2:3/3"]


def _arrive(batcher: Batcher, requests: list[Request], every_s: float) -> list[Future[Clip]]:
    futures = []
    for r in requests:
        futures.append(batcher.submit(r))
        time.sleep(every_s)
    return futures


def test_a_burst_spread_over_longer_than_the_gap_still_forms_one_batch() -> None:
    # Eight requests 40 ms apart: 280 ms from first to last, far beyond the 50 ms gap that a
    # lone request waits, but each comes within the gap of the one before it.
    model = FakeModel()
    batcher = Batcher(model, max_batch=8, max_wait_s=0.05, window_fraction=0.1)
    batcher.last_decode_s = 10.0  # a real-size batch: the window may stay open 1 s
    futures = _arrive(batcher, [req(f"p-{i}") for i in range(8)], every_s=0.04)
    assert [f.result(timeout=10).batch_size for f in futures] == [8] * 8
    assert model.calls == [[f"p-{i}" for i in range(8)]]


def test_a_steady_trickle_cannot_hold_a_batch_past_its_window() -> None:
    # A request every 30 ms forever would keep the gap open; the window (10 % of a 2 s
    # decode: 200 ms) closes the batch after about seven of them.
    model = FakeModel()
    batcher = Batcher(model, max_batch=64, max_wait_s=0.05, window_fraction=0.1)
    batcher.last_decode_s = 2.0
    futures = _arrive(batcher, [req(f"p-{i}") for i in range(20)], every_s=0.03)
    for f in futures:
        f.result(timeout=10)
    first = len(model.calls[0])
    assert 3 <= first <= 10, model.calls  # closed by the window, not by the 20th request
    assert sum(len(c) for c in model.calls) == 20


def test_the_window_follows_the_last_decoding_time() -> None:
    model = FakeModel(delay=0.3)
    batcher = Batcher(model, max_batch=4, max_wait_s=0.01, window_fraction=0.5)
    batcher.submit(req("p-1")).result(timeout=5)
    assert batcher.last_decode_s == pytest.approx(0.3, abs=0.15)


class Activations:
    """Stands for the tensors a decoding step holds (GBs on a GPU)."""


def test_a_failed_batch_has_let_go_of_its_memory_before_it_runs_again() -> None:
    # The out-of-memory's traceback holds the failed call's frames, and they hold its
    # activations: a retry inside the except block would run with them still allocated.
    alive: list[weakref.ref[Activations]] = []
    seen_at_release: list[bool] = []

    class HoldingModel(FakeModel):
        def __call__(self, *args: Any) -> tuple[npt.NDArray[np.float32], int]:
            activations = Activations()  # a local of the frame the traceback keeps
            alive.append(weakref.ref(activations))
            return super().__call__(*args)

    def release() -> None:
        seen_at_release.append(alive[0]() is None)

    batcher = Batcher(
        HoldingModel(oom_above=2), max_batch=4, max_wait_s=0.2, release_memory=release
    )
    for f in submit_all(batcher, [req(f"p-{i}") for i in range(4)]):
        f.result(timeout=10)
    assert seen_at_release == [True]  # released once, after the failed attempt was freed
    assert batcher.batches == [2, 2]
