"""The REST API of ``samstream serve``: jobs and live streams, their tracks, masks and events.

The API is stateless: every job lives in Redis (its hash, control, masks and events streams), and
runs in the cluster (a :class:`Backend` starts it). So an API process can stop and start again, or
run several times side by side, and the jobs go on.

Every request, ``/openapi.json`` included, needs ``Authorization: Bearer <token>`` (or the browser
viewer's session cookie, :mod:`pipeline.api.viewer.sessions`): 401 otherwise. The viewer's pages
are served at ``/view`` (:mod:`pipeline.api.viewer`).
The service's limits (:class:`ApiSettings`) answer 429, 409, 422 or 413 saying which option sets
them; its own failures answer 500 or 503 with an error id, the details going to its log only
(:mod:`pipeline.api.internal`).

This module puts the application together: middlewares, error answers, and one router per part
(:mod:`~pipeline.api.job_routes`, :mod:`~pipeline.api.track_routes`,
:mod:`~pipeline.api.result_routes`, the viewer's), which share an :class:`~pipeline.api.context.ApiContext`.
"""

from __future__ import annotations

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pipeline.api.body_limit import BodyLimit
from pipeline.api.context import ERRORS, ApiContext, Backend, HttpError
from pipeline.api.headers import SecurityHeaders
from pipeline.api.internal import InternalErrors, logged, unavailable
from pipeline.api.job_routes import job_routes
from pipeline.api.models import Health
from pipeline.api.result_routes import result_routes
from pipeline.api.settings import ApiSettings
from pipeline.api.track_routes import track_routes
from pipeline.api.viewer.routes import mount_static, page, viewer_router
from pipeline.api.viewer.sessions import BearerAuth, Sessions
from pipeline.errors import RedisUnavailableError

__all__ = ["ApiSettings", "Backend", "create_app"]

VERSION = "1"


def create_app(settings: ApiSettings, client: redis.Redis, backend: Backend) -> FastAPI:
    """The API over a Redis client and a backend."""
    ctx = ApiContext.of(settings, client, backend)
    keys = ctx.keys
    app = FastAPI(
        title="samstream",
        version=VERSION,
        description=(
            "Video segmentation jobs and live streams on MobileSAM. Masks are published to Redis "
            "streams (see the wire format) and can be paged here. Every request needs "
            "`Authorization: Bearer <token>`."
        ),
        responses=ERRORS,
    )
    # Added innermost first: the token is checked before a body is read or a route runs, and every
    # answer (the middlewares' own too) gets the security headers.
    app.add_middleware(InternalErrors)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_kb * 1024)
    sessions = Sessions(settings.token, client, keys)
    app.add_middleware(BearerAuth, token=settings.token, sessions=sessions, login_page=page("login.html"))
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(HttpError)
    async def _api_error(request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RedisUnavailableError)
    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        error_id = logged(f"{request.method} {request.url.path}: Redis failed", exc)
        detail = unavailable("service unavailable: its Redis does not answer", error_id)
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})

    for kind, live in (("jobs", False), ("streams", True)):  # the OpenAPI spec lists them in this order
        app.include_router(job_routes(ctx, kind, live))
        app.include_router(track_routes(ctx, kind, live))
        app.include_router(result_routes(ctx, kind, live))
    app.include_router(viewer_router(client, keys, sessions))
    mount_static(app)

    @app.get(
        "/healthz", response_model=Health, operation_id="health", dependencies=ctx.secured, tags=["service"]
    )
    def health() -> Health:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise HttpError(503, unavailable("Redis does not answer", logged("health check", exc))) from None
        return Health(status="ok", redis=True)

    return app
