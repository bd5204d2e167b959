"""The hand-written side of bench/runtime.py: five no-op Dramatiq actors on RabbitMQ, run by
``dramatiq bench.runtime_stages.handwritten -p 1 -t 8``. Each passes the id on (a pipeline
appends a step's result to the next message's arguments); the last pushes it onto the Redis
list the bench waits on. No aimarket code is imported.

Environment: ``BENCH_AMQP_URL`` (the vhost), ``BENCH_REDIS_URL``, ``BENCH_DONE_KEY``.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = "handwritten"
DONE_KEY = os.environ.get("BENCH_DONE_KEY", "aimarket:bench:runtime:done")

# Dramatiq's default middleware; confirmed publishes, as aimarket's broker does.
broker = RabbitmqBroker(
    url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    confirm_delivery=True,
)
dramatiq.set_broker(broker)
_redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))


def _pass(token: str = "") -> str:
    return token


step1 = dramatiq.actor(actor_name="hw.step1", queue_name=QUEUE)(_pass)
step2 = dramatiq.actor(actor_name="hw.step2", queue_name=QUEUE)(_pass)
step3 = dramatiq.actor(actor_name="hw.step3", queue_name=QUEUE)(_pass)
step4 = dramatiq.actor(actor_name="hw.step4", queue_name=QUEUE)(_pass)


@dramatiq.actor(actor_name="hw.done", queue_name=QUEUE)
def done(token: str = "") -> None:
    _redis.rpush(DONE_KEY, token)


def pipeline(token: str) -> dramatiq.pipeline:
    """The five steps for one run, ``token`` in the first message only."""
    return dramatiq.pipeline(
        [step1.message(token), step2.message(), step3.message(), step4.message(), done.message()],
        broker=broker,
    )
