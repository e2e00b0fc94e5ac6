"""The FastAPI application: the API under /api and the web page at /.

The parts: :mod:`.routes` (jobs, health, web page), :mod:`.service` (what the routes do),
:mod:`.sweeper` (outbox, retention, orphans), :mod:`.models` (the response bodies),
:mod:`.errors` (the one error shape), :mod:`.csrf` and :mod:`.limits` (refusals).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aima_common import __version__
from aima_common.config import Settings, load_settings
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from .csrf import CrossSiteGuard
from .errors import install_error_handlers
from .routes import health, jobs, proxy_errors, web
from .service import Backend

WEB_PAGE_CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


def create_app(settings: Settings | None = None) -> FastAPI:
    backend = Backend(settings or load_settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(backend.start)
        try:
            yield
        finally:
            await run_in_threadpool(backend.stop)

    app = FastAPI(
        title="AIMA API",
        version=__version__,
        description="Upload media for analysis; read jobs and their results.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url="/api/redoc",
        lifespan=lifespan,
    )
    app.state.backend = backend
    install_error_handlers(app)
    # added first, so it runs inside _headers below: its 403 gets the same headers
    app.add_middleware(CrossSiteGuard)
    app.middleware("http")(_headers)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(proxy_errors.router)
    web.mount_web_page(app)
    return app


async def _headers(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if not request.url.path.startswith("/api/"):
        response.headers.setdefault("Content-Security-Policy", WEB_PAGE_CSP)
    return response
