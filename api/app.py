"""The FastAPI application: routes, error shapes, CORS, the dashboard's static files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from store.db import open_database
from store.settings import Settings

from .deps import Services
from .head_requests import HeadAsGet
from .logs import install_redaction
from .openapi_docs import install_docs
from .request_limits import DATABASE_UNREACHABLE, RequestLimits
from .routes import (
    checkpoints,
    completions,
    datasets,
    estimates,
    evaluations,
    health,
    interpolations,
    job_files,
    job_spec,
    jobs,
    models,
    preflight,
    session,
    side_tasks,
    sweeps,
    uploads,
    usage,
    vocabularies,
    webhooks,
    workers,
)
from .sweeper import LeaseSweeper
from .webhooks import WebhookDispatcher


def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in err.errors()]
    return JSONResponse({"detail": "\n".join(parts)}, status_code=422)


def _database_unreachable(_request: Request, _err: OperationalError) -> JSONResponse:
    """A request that found the database unreachable (or gone mid-query): 503 with Retry-After, never a 500; the
    reason stays in the log (it can name hosts)."""
    return JSONResponse({"detail": DATABASE_UNREACHABLE.detail}, status_code=503, headers=DATABASE_UNREACHABLE.headers)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    install_redaction()  # at startup, after the server has configured its logging
    svc = app.state.services
    sweeper = LeaseSweeper(svc.sessions, svc.settings, svc.enqueue).start()  # dead leases show with no worker
    dispatcher = asyncio.create_task(WebhookDispatcher(svc.sessions, svc.settings).run(), name="mol-webhooks")
    try:
        yield
    finally:
        dispatcher.cancel()
        with suppress(asyncio.CancelledError):
            await dispatcher
        sweeper.stop()
        svc.sessions.kw["bind"].dispose()  # close the pool's connections now, not when the app is collected


def create_app(settings: Settings | None = None, enqueue: Callable[[str], None] | None = None) -> FastAPI:
    """The API for ``settings``; ``enqueue`` hands job ids to the workers (default: the Celery queue).

    Raises store.db.DatabaseUnreachable when the database does not answer."""
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.uses_filesystem_broker:
        settings.broker_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(settings.db_url, **settings.pool_options())
    if enqueue is None:
        from store.dispatch import job_sender

        enqueue = job_sender(settings)
    app = FastAPI(title="MoL Studio", version="1", docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.state.services = Services(settings=settings, sessions=sessions, enqueue=enqueue)
    app.state.tails = {}  # job id -> JobTail: one database tail per watched job (api.stream)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unreachable)
    app.add_middleware(RequestLimits)  # before the body is read: the caller, then the body's size
    app.add_middleware(HeadAsGet)
    if settings.cors_origins:  # added last, so outermost: its headers go on the answers of the two above too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    for module in (health, models, job_spec, session, datasets, uploads, jobs, sweeps, checkpoints, interpolations,
                   evaluations, side_tasks, completions, webhooks, workers, job_files, estimates,
                   preflight, vocabularies, usage):
        app.include_router(module.router)
    install_docs(app)
    frontend = Path(__file__).resolve().parent.parent / "frontend"
    if frontend.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=frontend, html=True), name="frontend")
    return app


__all__ = ["HTTPException", "create_app"]
