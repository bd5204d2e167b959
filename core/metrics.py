"""Prometheus metrics shared by the API and the workers.

The API serves them at ``GET /metrics``. A worker started with ``aimarket worker
--metrics-port N`` serves its own at ``http://HOST:N/metrics``: its processes write their
samples to a ``PROMETHEUS_MULTIPROC_DIR`` folder and one extra process (a Dramatiq fork
function) adds them up and answers. In embedded mode the stages run inside the API process,
so its ``/metrics`` has the worker metrics too.

Neither endpoint asks for a token: keep them on a network only Prometheus can reach.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: Environment variables ``aimarket worker --metrics-port`` passes to its processes.
METRICS_PORT_ENV = "AIMARKET_METRICS_PORT"
METRICS_HOST_ENV = "AIMARKET_METRICS_HOST"

TASKS_SUBMITTED = Counter(
    "aimarket_tasks_submitted",
    "Tasks accepted by POST /v1/tasks (answered 202).",
    ["workflow"],
)

TASKS_REFUSED = Counter(
    "aimarket_tasks_refused",
    "Submissions refused by a limit, by workflow and reason: rate_limited and "
    "too_many_active_tasks (429), queue_full (503).",
    ["workflow", "reason"],
)

TASKS_FINISHED = Counter(
    "aimarket_tasks_finished",
    "Tasks that ended, by workflow and final status (succeeded, failed, cancelled), counted "
    "where the ending is written (a worker, or the API for a cancel).",
    ["workflow", "status"],
)

CALLBACK_ATTEMPTS = Counter(
    "aimarket_callback_attempts",
    "Tries at delivering a callback, by event (started, progress, completed) and outcome: "
    "delivered (2xx), refused (3xx, 4xx or an address the SSRF guard refused: final) or "
    "error (no answer, 5xx, 429: retried).",
    ["event", "outcome"],
)

CALLBACK_FAILURES = Counter(
    "aimarket_callback_failures",
    "Callback deliveries that ended without a 2xx: given up after the last retry "
    "(reason exhausted) or refused (reason refused).",
    ["event", "reason"],
)

STAGE_DURATION = Histogram(
    "aimarket_stage_duration_seconds",
    "Wall time of one stage run, by actor and outcome (ok; failed: a StageError, never "
    "retried; error: any other exception, retried by the stage's policy).",
    ["actor", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)

GENERATION_SECONDS_PER_AUDIO_SECOND = Histogram(
    "aimarket_generation_seconds_per_audio_second",
    "Wall seconds of the model call per second of audio it decoded, one sample per clip "
    "(below 1: faster than real time).",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50),
)

GENERATION_BATCH_SIZE = Histogram(
    "aimarket_generation_batch_size",
    "Clips decoded together by one model call.",
    ["kind"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)


def observe_generation(kind: str, wall_s: float, audio_s: float, clips: int) -> None:
    """One model call that decoded ``clips`` clips of ``audio_s`` seconds in ``wall_s``."""
    GENERATION_BATCH_SIZE.labels(kind).observe(clips)
    if audio_s > 0:
        ratio = GENERATION_SECONDS_PER_AUDIO_SECOND.labels(kind)
        for _ in range(clips):
            ratio.observe(wall_s / audio_s)


# --- Queue depth (collected when scraped) ----------------------------------------------------

#: queue -> (ready, delayed, dead-lettered) message counts.
QueueCounts = Mapping[str, tuple[int, int, int]]


class QueueDepth(Collector):
    """``aimarket_queue_messages{queue, state}``: read from the broker when scraped, at most
    once per ``ttl_s`` (a scrape must not hammer RabbitMQ)."""

    def __init__(self, ttl_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._source: Callable[[], QueueCounts] | None = None
        self._lock = threading.Lock()
        self._counts: QueueCounts = {}
        self._at = float("-inf")

    def use(self, source: Callable[[], QueueCounts] | None) -> None:
        """Read the counts with ``source`` from now on (None: report nothing)."""
        with self._lock:
            self._source = source
            self._counts = {}
            self._at = float("-inf")

    def counts(self) -> QueueCounts:
        with self._lock:
            if self._source is not None and time.monotonic() - self._at >= self.ttl_s:
                self._at = time.monotonic()  # a failure is not retried before the ttl either
                try:
                    self._counts = dict(self._source())
                except Exception as exc:
                    log.warning("could not read the queue depths: %s", exc)
            return self._counts

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for queue, values in sorted(self.counts().items()):
            for state, value in zip(("ready", "delayed", "dead"), values, strict=True):
                family.add_metric([queue, state], value)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "aimarket_queue_messages",
            "Messages waiting in each queue: ready to be consumed, delayed (retries waiting "
            "for their time) or dead-lettered. RabbitMQ's counts exclude messages a worker "
            "holds unacknowledged.",
            labels=["queue", "state"],
        )


QUEUE_DEPTH = QueueDepth()
REGISTRY.register(QUEUE_DEPTH)


# --- Worker processes ------------------------------------------------------------------------


def prepare_multiprocess_dir(path: str) -> None:
    """Create ``path`` and remove the samples a previous run left there."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for file in folder.glob("*.db"):
        file.unlink()


def serve_worker_metrics() -> int:
    """Dramatiq fork function: serve the sum of every worker process's samples (read from
    ``PROMETHEUS_MULTIPROC_DIR``) on ``AIMARKET_METRICS_PORT`` until the worker stops."""
    from http.server import ThreadingHTTPServer

    from prometheus_client import MetricsHandler, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    host = os.environ.get(METRICS_HOST_ENV, "0.0.0.0")
    port = int(os.environ[METRICS_PORT_ENV])
    server = ThreadingHTTPServer((host, port), MetricsHandler.factory(registry))
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


SWEEP_ACTIONS = Counter(
    "aimarket_sweep_actions",
    "What the sweep did to tasks (timeout: ended past its deadline; resumed: its work was "
    "gone and it was started again; stuck: still no work after a resume, ended failed; told: "
    "ended without its callback ever being tried, which was then queued).",
    ["action"],
)
