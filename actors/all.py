"""Imports every actor module, so a worker (or the API) that imports this knows every stage.

Add a new stage module here; workflows then reference its actors by name.
"""

from actors import generate, lifecycle, store, visualize

__all__ = ["generate", "lifecycle", "store", "visualize"]
