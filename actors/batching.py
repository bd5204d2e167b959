"""Batches concurrent generation requests into one ``generate`` call per model.

Autoregressive decoding at batch 1 leaves a GPU mostly idle: every step costs about the same
whether it decodes one clip or eight (at musicgen-small's size it is memory-bound on a CPU
too: batch 8 gives 6.4x the audio of batch 1). A worker process therefore runs one generation
thread that takes requests from its worker threads (each handling one message), groups the
compatible ones, up to ``max_batch``, decodes them together and hands each its own clip back.

When a batch closes: the first request waits for company, and the batch closes as soon as
it is full, or no compatible request has come for ``max_wait_s`` (the *gap*: a burst that
arrives over a few hundred milliseconds, one request after another, all joins), or it has
waited ``window_fraction`` of the last batch's decoding time (the *window*, at least
``max_wait_s``: a steady trickle cannot hold a batch back for long). A lone request thus
waits ``max_wait_s``; a burst costs at most a tenth (by default) of a decode in latency and
buys up to ``max_batch`` times the throughput.

Compatible means: same model, device and sampling parameters, no seed, and the same duration
*bucket* (durations rounded up to ``bucket_s``). Durations in a batch are **padded**: the batch
decodes the longest one and each clip is trimmed to what its request asked, so a bucket bounds
the wasted decoding steps. A request with a seed runs alone: one batch shares one random
stream, and the same seed must give the same audio whatever else is queued.

Failures stay with their request: when a batch fails, its requests are retried one by one, so
one bad request cannot fail its batch-mates. Out of memory halves the batch size (it grows
back by one after each batch that fits) and the failed batch is retried in halves, once the
failed attempt's memory is released. A request
whose task is cancelled stops its batch at the next decoding step (its progress callback
raises ``TaskCancelled``): that request ends with the error, and the rest of the batch runs
again without it.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from actors.progress import TaskCancelled

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
#: (kind, model, prompts, duration, device, params, progress) -> (samples[batch, ch, n], rate)
GenerateFn = Callable[
    [str, str, list[str], float, str, Mapping[str, Any], Progress | None],
    tuple[npt.NDArray[np.float32], int],
]


@dataclass
class Clip:
    samples: npt.NDArray[np.float32]  # (channels, n)
    sample_rate: int
    batch_size: int  # how many requests shared the generate call


@dataclass
class Request:
    kind: str
    model: str
    prompt: str
    duration: float
    device: str = "auto"
    seed: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    progress: Progress | None = None
    future: Future[Clip] = field(default_factory=Future)
    #: Set when its progress callback raised TaskCancelled: the request is over.
    cancelled: TaskCancelled | None = None

    def key(self, bucket_s: float) -> tuple[Any, ...]:
        """Requests with the same key may share a batch."""
        if self.seed is not None:
            return ("seeded", id(self))
        bucket = math.ceil(self.duration / bucket_s)
        return (self.kind, self.model, self.device, tuple(sorted(self.params.items())), bucket)


def is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class Batcher:
    """One per process; :meth:`submit` is called from any thread."""

    def __init__(
        self,
        generate: GenerateFn,
        *,
        max_batch: int = 4,
        max_wait_s: float = 0.03,
        window_fraction: float = 0.1,
        bucket_s: float = 5.0,
        seeded: Callable[[Request], Clip] | None = None,
        release_memory: Callable[[], None] | None = None,
    ) -> None:
        self._generate = generate
        self.max_batch = max(1, max_batch)
        #: The batch size in force: lowered on out-of-memory, raised again after successes.
        self.limit = self.max_batch
        self.max_wait_s = max_wait_s
        self.window_fraction = window_fraction
        #: Seconds the last batch took to decode (sets the window; 0 before the first).
        self.last_decode_s = 0.0
        self.bucket_s = bucket_s
        self._seeded = seeded
        #: Called before a failed batch runs again (hands a GPU's freed memory back).
        self._release_memory = release_memory
        self._queue: queue.Queue[Request] = queue.Queue()
        self._backlog: deque[Request] = deque()
        self._thread = threading.Thread(target=self._loop, name="generate-batcher", daemon=True)
        self._thread.start()
        #: Sizes of the batches run so far (for tests, logs and the benchmark).
        self.batches: list[int] = []

    def submit(self, request: Request) -> Future[Clip]:
        self._queue.put(request)
        return request.future

    # --- the generation thread ---------------------------------------------------------

    def _next(self, timeout: float | None) -> Request | None:
        if self._backlog:
            return self._backlog.popleft()
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                continue
            batch = [first]
            key = first.key(self.bucket_s)
            held: list[Request] = []
            opened = time.monotonic()
            closes = opened + max(self.max_wait_s, self.window_fraction * self.last_decode_s)
            gap_ends = opened + self.max_wait_s
            while len(batch) < self.limit and first.seed is None:
                left = min(closes, gap_ends) - time.monotonic()
                if left <= 0 and self._queue.empty():
                    break
                item = self._next(max(0.0, left))
                if item is None:
                    break
                if item.key(self.bucket_s) == key:
                    batch.append(item)
                    gap_ends = time.monotonic() + self.max_wait_s
                else:
                    held.append(item)
            self._backlog.extend(held)
            self._run(batch)

    def _run(self, batch: list[Request]) -> None:
        started = time.monotonic()
        try:
            clips = self._decode(batch)
        except BaseException as exc:
            retry = self._after_failure(batch, exc)
        else:
            self.batches.append(len(batch))
            self.last_decode_s = time.monotonic() - started
            if self.limit < self.max_batch and len(batch) == self.limit:
                self.limit += 1
            for request, clip in zip(batch, clips, strict=True):
                request.future.set_result(clip)
            return
        # Run again only here, outside the except block: the failed attempt's traceback, whose
        # frames hold its activations (GBs on a GPU after an out-of-memory), is gone now, and
        # release_memory can hand that memory back before anything decodes again.
        if retry and self._release_memory is not None:
            self._release_memory()
        for part in retry:
            self._run(part)

    def _after_failure(self, batch: list[Request], exc: BaseException) -> list[list[Request]]:
        """End the requests that ``exc`` ends, and return the groups to run again."""
        stopped = [r for r in batch if r.cancelled is not None]
        if stopped:
            # A cancelled task stopped the decoding: it ends; its batch-mates run again.
            for request in stopped:
                request.future.set_exception(request.cancelled or exc)
            rest = [r for r in batch if r.cancelled is None]
            return [rest] if rest else []
        if len(batch) > 1 and is_out_of_memory(exc):
            self.limit = max(1, len(batch) // 2)
            log.warning("out of memory at batch %d; batch size now %d", len(batch), self.limit)
            half = len(batch) // 2
            return [batch[:half], batch[half:]]
        if len(batch) > 1:
            # Isolate the culprit: each request gets its own answer, good or bad.
            return [[request] for request in batch]
        batch[0].future.set_exception(exc)
        return []

    def _decode(self, batch: list[Request]) -> list[Clip]:
        first = batch[0]
        if first.seed is not None and self._seeded is not None:
            return [self._seeded(first)]
        longest = max(r.duration for r in batch)

        def progress(done: int, total: int) -> None:
            for request in batch:
                if request.progress is not None:
                    try:
                        request.progress(done, total)
                    except TaskCancelled as exc:
                        request.cancelled = exc
                        raise

        samples, rate = self._generate(
            first.kind,
            first.model,
            [r.prompt for r in batch],
            longest,
            first.device,
            first.params,
            progress,
        )
        return [
            Clip(samples[i, :, : round(r.duration * rate)], rate, len(batch))
            for i, r in enumerate(batch)
        ]
