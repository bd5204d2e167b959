"""Messages that wait hours before they run, the wait held by the broker itself (the tries
of a callback: CALLBACK_RETRY_SCHEDULE)."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker


def wait_queue(queue: str, delay_ms: int) -> str:
    """The RabbitMQ queue where messages for ``queue`` wait ``delay_ms`` (see enqueue_after)."""
    return f"{queue}.wait.{delay_ms}ms"


#: Wait queues this process has declared (a durable queue outlives the connection).
_declared: set[str] = set()
_declared_lock = threading.Lock()


def enqueue_after(broker: dramatiq.Broker, message: dramatiq.Message[Any], delay_s: float) -> None:
    """Publish ``message`` to be processed ``delay_s`` from now, the wait held by the broker.

    On RabbitMQ it waits in a durable queue of its own delay, ``<queue>.wait.<ms>ms``, which
    no worker reads: the queue's ``x-message-ttl`` expires it after the delay into its own
    queue (dead-lettering). RabbitMQ keeps it through restarts of workers and of RabbitMQ, and
    no consumer holds it unacked meanwhile, so the wait may be hours: Dramatiq's own delays
    are held unacked by a worker, and RabbitMQ's ``consumer_timeout`` (30 min) bounds them.
    Every message of a wait queue has the same delay, so they expire in order. Confirmed and
    blocking: call it from a thread.

    The in-process broker (embedded mode) has nothing that outlives the process: its own delay
    is used, and the next start queues again what a restart lost (aimarket/embedded.py).
    """
    delay_ms = max(0, round(delay_s * 1000))
    if not isinstance(broker, RabbitmqBroker) or delay_ms == 0:
        broker.enqueue(message, delay=delay_ms or None)
        return
    target = message.queue_name
    name = wait_queue(target, delay_ms)
    for attempt in (1, 2):
        try:
            broker.declare_queue(target, ensure=True)  # where it goes when the wait is over
            channel = broker.channel
            with _declared_lock:
                known = name in _declared
            if not known:
                channel.queue_declare(
                    queue=name,
                    durable=True,
                    arguments={
                        "x-message-ttl": delay_ms,
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": target,
                    },
                )
                with _declared_lock:
                    _declared.add(name)
            channel.basic_publish(
                exchange="",
                routing_key=name,
                body=message.encode(),
                properties=pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
            return
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
            # As Dramatiq's own enqueue: drop the connection, try once more on a new one (and
            # declare again: the queue may have been deleted, which makes a publish unroutable).
            del broker.connection
            with _declared_lock:
                _declared.discard(name)
            if attempt == 2:
                raise
