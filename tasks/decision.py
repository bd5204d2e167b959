"""The decision taken before a stage runs (``Lifecycle.begin``): a typed result."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from db.models import Task


class Verdict(enum.Enum):
    RUN = "run"
    #: The task has ended (cancelled, or failed in another branch): drop this stage and the
    #: stages after it in a pipeline.
    DROP = "drop"
    #: Past the workflow's deadline: ``task.fail`` has been queued; drop as for DROP.
    EXPIRED = "expired"


@dataclass(frozen=True)
class Decision:
    """Whether a stage runs, decided once before it starts."""

    verdict: Verdict
    #: The task's row, read for this decision (None when it does not exist); stages use it
    #: instead of reading it again.
    task: Task | None = None
    #: True for a main stage of an active task whose client wants ``progress`` events: its
    #: end sends one.
    progress: bool = False

    @property
    def runs(self) -> bool:
        return self.verdict is Verdict.RUN
