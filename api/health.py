"""Liveness and readiness; no token needed (load balancers and orchestrators call them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio.to_thread
import pika
from litestar import Response, get
from litestar.openapi import ResponseSpec
from sqlalchemy import text

from api.schemas import HealthOut
from api.services import Services, ServicesDep

#: Seconds each backend gets to answer a readiness check.
CHECK_TIMEOUT_S = 3.0


@get("/health/live", tags=["health"], summary="The process is up")
async def live() -> HealthOut:
    return HealthOut(status="ok")


async def _database(services: ServicesDep) -> None:
    async with services.db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _redis(services: ServicesDep) -> None:
    await services.state.ping()


async def _rabbitmq(services: ServicesDep) -> None:
    parameters = getattr(services.broker, "parameters", None)
    if parameters is None:
        return

    def connect() -> None:
        pika.BlockingConnection(parameters).close()

    await anyio.to_thread.run_sync(connect)


async def _s3(services: ServicesDep) -> None:
    await anyio.to_thread.run_sync(services.store.ping)


CHECKS: dict[str, Callable[[Services], Awaitable[None]]] = {
    "database": _database,
    "redis": _redis,
    "rabbitmq": _rabbitmq,
    "s3": _s3,
}


async def _check(name: str, services: ServicesDep) -> str:
    try:
        await asyncio.wait_for(CHECKS[name](services), CHECK_TIMEOUT_S)
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


@get(
    "/health/ready",
    tags=["health"],
    summary="Every backend answers",
    description="503 names each backend that is down.",
    responses={
        503: ResponseSpec(
            data_container=HealthOut,
            description="A backend is down: `checks` says which (`down: <error type>`)",
        )
    },
)
async def ready(services: ServicesDep) -> Response[HealthOut]:
    results = await asyncio.gather(*(_check(name, services) for name in CHECKS))
    checks = dict(zip(CHECKS, results, strict=True))
    down = [name for name, result in checks.items() if result != "ok"]
    status = "ok" if not down else "down: " + ", ".join(down)
    return Response(HealthOut(status=status, checks=checks), status_code=503 if down else 200)
