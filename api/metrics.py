"""``GET /metrics``: Prometheus text format, without a token.

It names workflows, queues and routes, nothing about users or their tasks, but it is not meant
for the public: restrict it to the network Prometheus scrapes from (a reverse proxy rule, a
network policy). HTTP requests are counted by Litestar's Prometheus middleware under their
route template (``/v1/tasks/{task_id:str}``, never the id), tasks submitted by workflow
after each 202 of ``POST /v1/tasks``, and the queue depths read from the broker when scraped
(at most every 5 s). In embedded mode the stage metrics of the in-process workers are here too.
"""

from __future__ import annotations

import contextlib
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name, xq_name
from litestar import Response, get
from litestar.plugins.prometheus import PrometheusConfig
from litestar.status_codes import HTTP_202_ACCEPTED
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from core.metrics import QUEUE_DEPTH, TASKS_SUBMITTED, QueueCounts
from tasks.view import TaskOut

#: HTTP request count and latency by method, route template and status.
PROMETHEUS = PrometheusConfig(
    app_name="aimarket",
    prefix="aimarket_http",
    group_path=True,
    exclude=["^/metrics$"],
)


@get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    description="Prometheus text format. No token: restrict it to the monitoring network.",
    include_in_schema=True,
    sync_to_thread=True,  # reading the queue depths may wait on RabbitMQ
    media_type=CONTENT_TYPE_LATEST,
)
def metrics() -> Response[bytes]:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def count_submitted(response: Response[Any]) -> Response[Any]:
    """``after_request`` hook of the /v1 router: a 202 carrying a task view is an accepted
    submission (``POST /v1/tasks`` is the only route that answers 202)."""
    if response.status_code == HTTP_202_ACCEPTED and isinstance(response.content, TaskOut):
        TASKS_SUBMITTED.labels(response.content.workflow).inc()
    return response


def watch_queues(broker: dramatiq.Broker) -> None:
    """Report the depth of ``broker``'s queues at each scrape."""
    QUEUE_DEPTH.use(lambda: queue_counts(broker))


def queue_counts(broker: dramatiq.Broker) -> QueueCounts:
    queues = sorted(q for q in broker.get_declared_queues() if not q.endswith((".DQ", ".XQ")))
    if isinstance(broker, StubBroker):
        return {
            q: (
                broker.queues[q].qsize(),
                broker.queues[dq_name(q)].qsize() if dq_name(q) in broker.queues else 0,
                len(broker.dead_letters_by_queue.get(q, ())),
            )
            for q in queues
        }
    parameters = getattr(broker, "parameters", None)
    if parameters is None:
        return {}
    return _rabbitmq_counts(parameters, queues)


def _rabbitmq_counts(parameters: Any, queues: list[str]) -> QueueCounts:
    """Passive declares on a connection of its own (the broker's are per thread): a queue
    that does not exist yet counts as empty."""
    import pika
    import pika.exceptions

    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        out: dict[str, tuple[int, int, int]] = {}
        for queue in queues:
            counts = []
            for name in (queue, dq_name(queue), xq_name(queue)):
                try:
                    ok = channel.queue_declare(name, passive=True)
                    counts.append(int(ok.method.message_count))
                except pika.exceptions.ChannelClosedByBroker:
                    counts.append(0)
                    channel = connection.channel()
            out[queue] = (counts[0], counts[1], counts[2])
        return out
    finally:
        with contextlib.suppress(Exception):
            connection.close()
