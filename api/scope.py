"""User scope: when the marketplace acts for one of its users, it says so, and reads are then
limited to that user's tasks.

The marketplace token is one key for all of a marketplace's users, so by itself it lets the
bearer read any task. A marketplace that forwards its users' requests (a front end that
polls task status, say) sends ``X-User-Scope: <user_id>`` with them; then

* a task of another user is answered 404, exactly as a task that does not exist (its id
  reveals nothing), for reads, events, callback attempts and cancel;
* lists and stats are of the scoped user (``user_id`` may be left out; another is a 403);
* a submission for another user is a 403.

Without the header nothing changes: the marketplace sees everything it submitted.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from api.errors import ApiError
from db.engine import Database
from db.models import Task
from db.tasks import get_task

HEADER = "X-User-Scope"

#: The router-level parameter: documented on every /v1 route, read by those that need it.
SCOPE_PARAMETER: Any = Parameter(
    str | None,
    header=HEADER,
    required=False,
    description="The marketplace user this request acts for: tasks of other users are then "
    "answered 404, and lists, stats and submissions are limited to this user.",
)


def user_id_parameter(what: str) -> Any:
    """The ``user_id`` query parameter of a list or stats route: optional under a scope."""
    return Parameter(
        min_length=1,
        max_length=200,
        required=False,
        description=f"{what}; required unless {HEADER} names the user.",
    )


async def find_task(db: Database, task_id: str, scope: str | None) -> Task:
    """The task of a route's ``task_id``, or the 404 of a missing one: also for an id that is
    not a UUID (never looked up) and for another user's task under a scope."""
    try:
        uuid.UUID(task_id)
    except ValueError:
        return visible(None, scope, task_id)
    return visible(await get_task(db, task_id), scope, task_id)


def visible(task: Task | None, scope: str | None, task_id: str) -> Task:
    """``task`` when it exists and the scope (if any) may see it; else the 404 of a missing
    task, so another user's task id cannot be told apart from a wrong one."""
    if task is None or (scope is not None and task.user_id != scope):
        raise NotFoundException(f"no task '{task_id}'")
    return task


def scoped_user(user_id: str | None, scope: str | None, field: str = "user_id") -> str:
    """The user a list, stats or submission is about: ``user_id``, which must be the scoped
    user when there is a scope (403 otherwise), or the scoped user when it is left out."""
    if scope is not None and user_id is not None and user_id != scope:
        raise ApiError(
            403,
            "user_scope_mismatch",
            f"{field} must be the user of {HEADER} ('{scope}') in a request scoped to a user",
            field,
        )
    chosen = user_id if user_id is not None else scope
    if chosen is None:
        raise ApiError(400, "invalid_request", f"{field} is required", field)
    return chosen
