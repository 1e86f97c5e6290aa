"""What every service answers without a token: `GET /health/live`, `GET /health/ready`
(200 only when broker, store and cache answer, else 503 naming which is down) and
`GET /metrics` (Prometheus)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import anyio
from fastapi import APIRouter
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.http import app_context

if TYPE_CHECKING:
    from shared.service import ServiceContext

Check = Callable[[], Awaitable[None]]

router = APIRouter(tags=["health"])


class Live(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["live"]


class Ready(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ready", "degraded"]
    checks: dict[str, str] = Field(
        description="broker, store and cache: `ok`, or `down: <error class>`"
    )


def readiness_checks(ctx: ServiceContext) -> dict[str, Check]:
    async def broker() -> None:
        if not await ctx.broker.ping(timeout=2.0):
            raise ConnectionError("broker does not answer")

    async def store() -> None:
        def select_one() -> None:
            with ctx.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        await anyio.to_thread.run_sync(select_one)

    async def cache() -> None:
        await ctx.redis.ping()

    return {"broker": broker, "store": store, "cache": cache}


async def readiness(checks: dict[str, Check]) -> Ready:
    results = {}
    for name, check in checks.items():
        try:
            await check()
            results[name] = "ok"
        except Exception as error:
            results[name] = f"down: {type(error).__name__}"
    healthy = all(value == "ok" for value in results.values())
    return Ready(status="ready" if healthy else "degraded", checks=results)


@router.get("/health/live", response_model=Live)
async def live() -> Live:
    """The process answers."""
    return Live(status="live")


@router.get(
    "/health/ready",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "Something the service needs is down."}},
)
async def ready(request: Request) -> Response:
    """200 when the broker, the store and the cache answer, else 503 saying which is down."""
    ctx: ServiceContext = app_context(request)
    answer = await readiness(readiness_checks(ctx))
    status = 200 if answer.status == "ready" else 503
    return JSONResponse(answer.model_dump(mode="json"), status_code=status)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format.",
                     "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """The service's Prometheus metrics."""
    ctx: ServiceContext = app_context(request)
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)
