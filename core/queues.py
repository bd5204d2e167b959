"""The queues a deployment knows by name (imported by the CLI before any worker set-up, so
it imports nothing)."""

from __future__ import annotations

#: Queues whose stages hold a model: a worker prefetches only as many of their messages as a
#: batch holds, so it never sits on a job another worker could start now.
GPU_QUEUES = frozenset({"musicgen", "audiogen"})
#: What `aimarket worker` serves by default: every stage of the built-in workflows.
ALL_QUEUES = ("default", "callbacks", "musicgen", "audiogen")
