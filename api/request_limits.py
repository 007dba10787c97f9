"""Bounds on what one request may make the API read, applied before the routes see it (pure ASGI: nothing is
buffered).

FastAPI reads and parses a JSON body before any dependency runs, so without this a client with no token could make
the API hold a body of any size before its 401. For a /v1 request that carries a body, :class:`RequestLimits`
first authenticates the caller (api.deps.owner's rule: 401, or 403 for a cookie-only write) without reading a byte,
then cuts the body off at its limit (:func:`body_limit`): a 413 at once from its Content-Length, else as soon as
that many bytes have arrived (chunked bodies included).
"""

from __future__ import annotations

import re

from fastapi import HTTPException
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.settings import Settings

from .deps import OWNER_KEY, owner_unheld
from .upload import MULTIPART_OVERHEAD

API_PREFIX = "/v1/"
UPLOAD_PART = re.compile(r"/v1/uploads/[^/]+/parts/[^/]+/?")
DATASETS = "/v1/datasets"
DATABASE_UNREACHABLE = HTTPException(503, "the database is unreachable right now; retry in a few seconds",
                                     headers={"Retry-After": "2"})


def route_path(scope: Scope) -> str:
    """The request's path as the routes match it (without the ``root_path`` a proxy mounts the API under)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def has_body(headers: Headers) -> bool:
    """Whether a request comes with a body: a Content-Length other than 0, or a Transfer-Encoding (chunked)."""
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0"


def body_limit(method: str, path: str, settings: Settings) -> tuple[int, str] | None:
    """(the most bytes the body of ``method path`` may hold, the 413's message naming that limit); None for an
    upload part, whose route bounds it by the room its upload declared."""
    if method == "PUT" and UPLOAD_PART.fullmatch(path):
        return None
    if method == "POST" and path.rstrip("/") == DATASETS:
        return (settings.max_upload_bytes + MULTIPART_OVERHEAD,
                f"file: larger than the limit of {settings.max_upload_mb:g} MiB (MOL_MAX_UPLOAD_MB)")
    return (settings.max_json_body_bytes,
            f"body: larger than the limit of {settings.max_json_body_kb:g} KiB (MOL_MAX_JSON_BODY_KB)")


async def _answer(error: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)(scope, receive, send)


class RequestLimits:
    """Authenticates each /v1 request with a body before reading it, and bounds the body (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if not path.startswith(API_PREFIX) or not has_body(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # headers and cookies only: nothing is received
        services = request.app.state.services
        try:
            scope[OWNER_KEY] = await run_in_threadpool(owner_unheld, request, services)
        except HTTPException as refused:
            await _answer(refused, scope, receive, send)
            return
        except OperationalError:  # outside the app's exception handlers: answered here as they would (api.app)
            await _answer(DATABASE_UNREACHABLE, scope, receive, send)
            return
        limit = body_limit(scope["method"], path, services.settings)
        if limit is None:
            await self.app(scope, receive, send)
            return
        await LimitedBody(self.app, *limit)(scope, receive, send)


class LimitedBody:
    """One request whose body may hold ``limit`` bytes: a larger Content-Length is a 413 before the app runs; else
    the bytes are counted as the app receives them, and past the limit the 413 is sent (when the app has not begun
    its answer), the app's receive raises, and what the app sends after that is dropped."""

    def __init__(self, app: ASGIApp, limit: int, message: str) -> None:
        self.app, self.limit = app, limit
        self.error = HTTPException(413, message)
        self.received = 0
        self.started = self.refused = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await _answer(self.error, scope, receive, send)
            return

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    if not self.started:
                        await _answer(self.error, scope, receive, send)
                        self.refused = True
                    raise self.error
            return message

        async def unless_refused(message: Message) -> None:
            if self.refused:
                return
            self.started = True
            await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not self.refused:  # after the 413, what the cut-off body made the app raise is answered already
                raise
