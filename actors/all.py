"""Imports every actor module, so a worker (or the API) that imports this knows every stage.

Built-in stages are imported below. Stages from elsewhere come in two ways, with no change
here: an installed package that declares an entry point in the ``aimarket.stages`` group (its
module registers actors with ``@stage`` when imported), and the modules listed in the
``ACTOR_MODULES`` setting (for stages kept beside a deployment's workflow folder).
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from actors import dag, events, generate, lifecycle, mix, store, visualize
from core.settings import SettingsError, get_settings

__all__ = ["dag", "events", "generate", "lifecycle", "mix", "store", "visualize"]

ENTRY_POINT_GROUP = "aimarket.stages"


log = logging.getLogger(__name__)


def _load_plugins() -> list[str]:
    loaded = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()
        loaded.append(f"{entry.name} ({entry.value})")
    for name in filter(None, (m.strip() for m in get_settings().actor_modules.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise SettingsError(
                f"ACTOR_MODULES names {name!r}, which cannot be imported: {exc} "
                "(is its folder on PYTHONPATH?)"
            ) from None
        loaded.append(name)
    if loaded:
        log.info("stage plugins: %s", ", ".join(loaded))
    return loaded


PLUGINS = _load_plugins()
