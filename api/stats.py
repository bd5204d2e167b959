"""GET /v1/stats: per-user usage, from the database."""

from __future__ import annotations

from datetime import datetime

from litestar import get
from litestar.params import Parameter

from api.errors import ApiError, error_response
from api.schemas import StatsOut, WorkflowStatsOut
from api.scope import scoped_user, user_id_parameter
from api.services import ServicesDep
from db.tasks import user_stats


@get(
    "/v1/stats",
    tags=["stats"],
    summary="A user's usage per workflow",
    responses={
        400: error_response("Missing user_id (required without X-User-Scope) or bad time range"),
        403: error_response("user_id is not the user of X-User-Scope"),
    },
)
async def stats(
    services: ServicesDep,
    user_scope: str | None,
    user_id: str | None = user_id_parameter("The marketplace's user id"),
    start: datetime | None = Parameter(
        query="from", default=None, description="Only tasks created at or after this time."
    ),
    end: datetime | None = Parameter(
        query="to", default=None, description="Only tasks created before this time."
    ),
) -> StatsOut:
    if start is not None and end is not None and start > end:
        raise ApiError(400, "invalid_range", "'from' must not be after 'to'", "from")
    user = scoped_user(user_id, user_scope)
    rows = await user_stats(services.db, user, start, end)
    return StatsOut(
        user_id=user,
        start=start,
        end=end,
        workflows=[
            WorkflowStatsOut(
                workflow=row.workflow,
                counts=row.counts,
                total=sum(row.counts.values()),
                audio_seconds=round(row.audio_seconds, 3),
                avg_processing_s=row.avg_processing_s,
            )
            for row in rows
        ],
    )
