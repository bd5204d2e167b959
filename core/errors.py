"""Errors a stage (or the audio code under it) raises to end its task with a code the client
can act on. In the kernel because every layer that runs stage work raises them."""

from __future__ import annotations


class StageError(Exception):
    """A failure no retry can fix: the task ends ``failed`` with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TaskGone(StageError):
    """The task was deleted or already ended (e.g. cancelled): the rest of its run is dropped."""

    def __init__(self, task_id: str, status: str | None) -> None:
        super().__init__("task_gone", f"task {task_id} is {status or 'missing'}; run dropped")
