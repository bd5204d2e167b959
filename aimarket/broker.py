"""The Dramatiq broker: one per process, set before any actor module is imported."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    Callbacks,
    CurrentMessage,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from core.metrics import METRICS_PORT_ENV
from core.queues import GPU_QUEUES
from core.settings import Settings
from workflows.catalog import StageCatalog, stage_catalog

_broker: dramatiq.Broker | None = None


class InProcessBroker(StubBroker):
    """Dramatiq's in-memory broker, for embedded mode, with a prefetch of its own for the
    generation queues.

    A generation message holds its worker thread while it waits for the batcher, and one
    Dramatiq worker runs every stage of the embedded mode. With the queues' common prefetch
    (twice the threads), generation messages could take every thread, and a finished task's
    last stages then waited for the next decode. Like a GPU worker's ``dramatiq_queue_prefetch``
    on RabbitMQ, at most ``generation_prefetch`` generation messages of a queue are taken at
    once (a full batch, leaving threads for the rest); the others wait in the queue.
    """

    def __init__(self, *, generation_prefetch: int, middleware: list[dramatiq.Middleware]) -> None:
        super().__init__(middleware=middleware)
        self.generation_prefetch = generation_prefetch

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> Any:
        if queue_name in GPU_QUEUES:
            prefetch = min(prefetch, self.generation_prefetch)
        return super().consume(queue_name, prefetch, timeout)


def setup_broker(settings: Settings, *, publisher: bool = False) -> dramatiq.Broker:
    """Create the broker, make it the global one and register every stage actor on it.

    Idempotent: actors register at import time, so a process has exactly one broker.
    """
    global _broker
    if _broker is not None:
        return _broker
    url = settings.rabbitmq_url
    if url is not None and publisher:
        # A process that only publishes (the API) uses its connections now and then, and
        # blocking pika sends heartbeats only while a connection is in use: RabbitMQ would
        # close an idle one for missed heartbeats, and the next publish would stall on the
        # dead socket for minutes. Without heartbeats the connection simply stays open.
        url += "?heartbeat=0"
    # Embedded mode (no RabbitMQ): messages stay in this process, whose API runs the workers.
    # confirm_delivery: a 202 means RabbitMQ has the message, not that pika buffered it.
    from actors.failures import TaskFailures
    from actors.resources import WorkerResources
    from actors.retries import StageRetries

    # Dramatiq's defaults, with Retries replaced by one that reads each stage's policy.
    # "after" hooks run in reverse order: TaskFailures, placed before StageRetries, runs after
    # it and so sees ``message.failed`` once the retries have given up.
    middleware = [
        AgeLimit(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        TaskFailures(),
        StageRetries(),
        AsyncIO(),
        CurrentMessage(),
        WorkerResources(),
    ]
    if url is not None and not publisher and os.environ.get(METRICS_PORT_ENV):
        # A worker serving metrics (aimarket worker --metrics-port): Dramatiq's own message
        # counters and durations join ours, served by our one exposition process.
        middleware.append(_message_metrics())
    broker: dramatiq.Broker = (
        # A full batch may wait for the model; at least one thread stays for the other stages.
        InProcessBroker(
            generation_prefetch=max(1, min(settings.batch_max_size, settings.embedded_threads - 1)),
            middleware=middleware,
        )
        if url is None
        else RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
    )
    dramatiq.set_broker(broker)
    # Imported here, once the broker is set: importing declares every actor on the broker of
    # the moment (Dramatiq's way), and a broker created by default would be RabbitMQ's.
    import actors.all  # noqa: F401
    from actors.registry import declare_on

    declare_on(broker)  # those imported before this broker existed
    _broker = broker
    return broker


def _message_metrics() -> dramatiq.Middleware:
    """Dramatiq's Prometheus middleware without its own HTTP server (port 9191): its samples
    go to PROMETHEUS_MULTIPROC_DIR, which ``core.metrics.serve_worker_metrics`` serves."""
    from dramatiq.middleware.prometheus import Prometheus

    class MessageMetrics(Prometheus):
        @property
        def forks(self) -> list[Any]:
            return []

    return MessageMetrics()


def actor_catalog() -> StageCatalog:
    """Every registered stage actor, its queue and outputs, for checking workflows offline.

    Registers the actors on an in-memory broker when this process has no broker yet.
    """
    if _broker is None and dramatiq.broker.global_broker is None:
        dramatiq.set_broker(StubBroker())
    broker = _broker or dramatiq.get_broker()
    import actors.all  # noqa: F401  (declares the actors, once per process)
    from actors.registry import declare_on

    declare_on(broker)
    return stage_catalog(broker)


def is_embedded(broker: dramatiq.Broker) -> bool:
    """True when messages never leave this process (no RabbitMQ configured)."""
    return isinstance(broker, StubBroker)
