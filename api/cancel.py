"""POST /v1/tasks/{task_id}/cancel: end a task that has not ended yet.

The cancel ends the task's row ``cancelled`` at once (the same "first ending wins" transition
as every ending, so a task that succeeds or fails at the same instant is either cancelled or
answered 409, never both), then marks it in the short-lived state for a generation that is
decoding it (it stops at its next decoding step, see ``actors/progress.py``), then tells the
client. What is still queued is dropped when a worker takes it: pipeline stages find the task
ended (``active_task``), DAG stages are not started (``run_stage``).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Response, post
from litestar.status_codes import HTTP_202_ACCEPTED

from api.errors import error_response
from api.scope import find_task
from api.services import ServicesDep
from tasks.view import TaskOut, task_view

log = logging.getLogger(__name__)


async def _keep(response: Response[Any]) -> Response[Any]:
    """This route's ``after_request``: replaces the router's, which counts every 202 carrying
    a task view as a submission."""
    return response


@post(
    "/v1/tasks/{task_id:str}/cancel",
    status_code=HTTP_202_ACCEPTED,
    tags=["tasks"],
    summary="Cancel a task",
    description="Ends a queued or running task `cancelled`: a queued task never starts, a "
    "running generation stops at its next decoding step, and the client is called back (as "
    "for any ending). Answers with the task's view.",
    responses={
        404: error_response("No such task"),
        409: error_response("The task has already ended (code `already_finished`)"),
    },
    after_request=_keep,
)
async def cancel_task(
    task_id: str, services: ServicesDep, user_scope: str | None
) -> Response[TaskOut]:
    task = await find_task(services.db, task_id, user_scope)
    task = await services.lifecycle.cancel(task)
    return Response(task_view(task, services.store), status_code=HTTP_202_ACCEPTED)
