"""HEAD on the API's GET routes: answered as GET is, with the same status and headers and no body.

FastAPI's routes take only the methods they declare, and adding HEAD to each would double the OpenAPI document;
this ASGI piece runs the GET instead and ends the answer at its headers (a streamed answer, such as a download
or an event stream, is stopped at its first chunk).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .request_limits import route_path

API_PATHS = ("/v1/", "/healthz")


class ResponseEnded(OSError):
    """What the app's send raises once the HEAD answer is complete, as a server's does when the client has gone."""


class HeadAsGet:
    """Answers HEAD on :data:`API_PATHS` by running GET and sending only its status and headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not route_path(scope).startswith(API_PATHS):
            await self.app(scope, receive, send)
            return
        ended = False

        async def until_ended() -> Message:
            return {"type": "http.disconnect"} if ended else await receive()

        async def headers_only(message: Message) -> None:
            nonlocal ended
            if ended:
                raise ResponseEnded
            if message["type"] == "http.response.body":
                message, ended = {"type": "http.response.body", "body": b"", "more_body": False}, True
            await send(message)

        try:
            await self.app(dict(scope, method="GET"), until_ended, headers_only)  # a copy: the server's keeps HEAD
        except Exception:
            if not ended:
                raise
