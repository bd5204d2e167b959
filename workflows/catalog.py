"""The stage catalog: which actors a workflow may name, on which queue, with which outputs.

It comes from the broker, not from the actors package: a stage actor is a
:class:`StageActor` (a ``dramatiq.Actor`` that also carries the keys its result has), and
:func:`stage_catalog` reads them off whatever broker the process set up. The workflow language
thereby depends on Dramatiq's broker interface alone, never on the modules that define stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dramatiq
import msgspec


class StageActor(dramatiq.Actor[Any, Any]):
    """A Dramatiq actor that workflows may use as a stage.

    ``outputs`` names the keys of the dict it returns (None: not declared), so a workflow that
    reads ``stages.x.key`` for a key it does not have is refused when it loads.
    """

    outputs: tuple[str, ...] | None = None


class StageCatalog(msgspec.Struct, frozen=True):
    """Every stage actor's default queue, and the outputs of those that declare them."""

    queues: Mapping[str, str]
    outputs: Mapping[str, tuple[str, ...]]


def stage_catalog(broker: Any) -> StageCatalog:
    """The stage actors declared on ``broker`` (a ``dramatiq.Broker``)."""
    queues: dict[str, str] = {}
    outputs: dict[str, tuple[str, ...]] = {}
    for name in broker.get_declared_actors():
        actor = broker.get_actor(name)
        if isinstance(actor, StageActor):
            queues[name] = actor.queue_name
            if actor.outputs is not None:
                outputs[name] = actor.outputs
    return StageCatalog(queues=queues, outputs=outputs)
