"""The Litestar application: `build_app()` builds it from the settings and the services.

The broker, and in embedded mode the in-process workers, are set up by the composition root
(``aimarket.app.create_app``): this package never imports the stage actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeAlias

import msgspec
from litestar import Litestar, Request, Router
from litestar.di import Provide
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from api.admin import admin_router, check_admin_token
from api.auth import require_token
from api.cancel import cancel_task
from api.errors import HANDLERS
from api.health import live, ready
from api.media import media
from api.metrics import PROMETHEUS, count_submitted, metrics, queue_counts, watch_queues
from api.openapi import add_workflow_inputs, document_errors
from api.playground import playground
from api.scope import HEADER as SCOPE_HEADER
from api.scope import SCOPE_PARAMETER
from api.screening import Screening
from api.services import Services
from api.stats import stats
from api.tasks import IDEMPOTENCY_HEADER, TaskController
from api.uploads import upload_audio
from api.workflows import list_workflows
from core.backends import describe
from core.logs import bind, litestar_logging, route_uvicorn_to_root
from core.settings import Settings
from tasks.sweep import Sweeper, make_marks

log = logging.getLogger(__name__)

#: What runs beside the API while it serves (embedded mode: the Dramatiq workers): entered
#: by the lifespan once the start-up is logged, before the sweeper starts; left after the
#: sweeper stops, before the services close.
Workers: TypeAlias = Callable[[], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def no_workers() -> AsyncIterator[None]:
    """The workers of an API whose tasks run elsewhere (RabbitMQ): none."""
    yield


def build_app(settings: Settings, services: Services, workers: Workers = no_workers) -> Litestar:
    """Builds the app on ``services``; raises SettingsError before serving anything."""
    # Here, not in the lifespan: a bucket that cannot be used stops `aimarket serve` with one
    # line (a SettingsError), before the server starts. Created when missing.
    services.store.ensure_bucket()
    check_admin_token(settings, services.token)
    sweeper = Sweeper(
        db=services.db,
        state=services.state,
        broker=services.broker,
        plans=services.plans,
        settings=settings,
        marks=make_marks(settings),
        lifecycle=services.lifecycle,
        queue_counts=lambda: queue_counts(services.broker),
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        for part, backend in describe(settings).items():
            log.info("%-8s -> %s", part, backend)
        log.info(
            "serving %d workflows: %s",
            len(services.workflows),
            ", ".join(sorted(services.workflows)),
        )
        if settings.log_format == "json":
            # uvicorn configured its loggers after create_app: send them through the root's.
            route_uvicorn_to_root()
        watch_queues(services.broker)
        if settings.marketplace_token is None:
            log.warning("MARKETPLACE_TOKEN is not set: using the token %s", services.token)
        try:
            async with workers():
                # Every API process sweeps (one at a time: the sweep's lock): no task stays stuck.
                sweeping = asyncio.create_task(sweeper.loop(), name="sweep")
                try:
                    yield
                finally:
                    sweeping.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sweeping
        finally:
            await sweeper.close()
            await services.close()

    v1 = Router(
        path="/",
        route_handlers=[TaskController, cancel_task, stats, list_workflows, upload_audio],
        guards=[require_token],
        security=[{"bearer": []}],
        parameters={"user_scope": SCOPE_PARAMETER},
        before_request=bind_request_context,
        after_request=count_submitted,
    )
    app = Litestar(
        # The admin router is outside v1: the marketplace's token must not open it.
        route_handlers=[v1, admin_router(sweeper), live, ready, media, playground, metrics],
        # Screening refuses bad text and JSON before any route (api/screening.py).
        middleware=[PROMETHEUS.middleware, Screening((IDEMPOTENCY_HEADER, SCOPE_HEADER))],
        dependencies={"services": Provide(lambda: services, sync_to_thread=False)},
        exception_handlers=HANDLERS,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title=settings.api_name,
            version=settings.api_version,
            description="Runs AudioCraft generation tasks for a marketplace.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http", scheme="bearer", description="MARKETPLACE_TOKEN"
                    ),
                    "admin": SecurityScheme(
                        type="http", scheme="bearer", description="ADMIN_TOKEN (/v1/admin)"
                    ),
                }
            ),
        ),
        request_max_body_size=1_000_000,
        logging_config=LoggingConfig(
            **litestar_logging(settings.log_level.upper(), settings.log_format)
        ),
    )
    app.state.services = services
    app.state.sweeper = sweeper
    add_workflow_inputs(app, services.workflows)
    document_errors(app)
    return app


async def bind_request_context(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook of the /v1 router: the request's task id, user and workflow go
    into the log context (see ``core.logs``) of the handler."""
    fields: dict[str, Any] = {
        "task_id": request.path_params.get("task_id"),
        "user_id": request.query_params.get("user_id"),
    }
    if request.method == "POST" and request.content_type[0] == "application/json":
        try:
            body = msgspec.json.decode(await request.body())
        except (msgspec.DecodeError, ValueError):
            body = None
        if isinstance(body, dict):
            for key in ("user_id", "workflow"):
                if isinstance(body.get(key), str):
                    fields[key] = body[key]
    bind(**fields)
