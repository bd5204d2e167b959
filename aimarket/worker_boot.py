"""The module ``aimarket worker`` hands to Dramatiq's CLI: each worker process imports it,
which sets up the broker, registers every actor and checks the workflows."""

from __future__ import annotations

import logging

from aimarket.broker import setup_broker
from core.logs import configure_root, quiet_libraries
from core.settings import get_settings
from workflows.compiler import declare_queues

settings = get_settings()
logging.getLogger().setLevel(settings.log_level.upper())
# Dramatiq set up this process's handler (to its main process); LOG_FORMAT=json re-formats it.
configure_root(settings.log_format)
quiet_libraries()
broker = setup_broker(settings)

from core.signing import secret_key, webhook_secret  # noqa: E402

secret_key(webhook_secret(settings))  # a worker that cannot sign callbacks must not start

from actors.warmup import configure_models, start_warmup  # noqa: E402  (no torch yet)

configure_models(settings)
start_warmup(settings)

from actors.resources import resources  # noqa: E402

# Loading the workflows here makes a worker refuse to start on a broken definition, and lets
# it consume queues that only a workflow names (a stage's ``queue:`` override).
declare_queues(broker, resources().plans)
# EXTRA_QUEUES are served by worker pools (`aimarket worker -Q musicgen-large`) whether or not
# a workflow routes to them yet: a worker started for one must consume it.
for _queue in settings.extra_queue_names:
    broker.declare_queue(_queue)
