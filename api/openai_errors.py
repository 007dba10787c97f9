"""Errors in the API's shape and in OpenAI's, for the routes an OpenAI client calls (completions, models)."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse


async def openai_errors(answering):
    """What ``answering`` answers, or its HTTPException as :func:`openai_error`."""
    try:
        return await answering
    except HTTPException as err:
        return openai_error(err)


def openai_error(err: HTTPException) -> JSONResponse:
    """The error in the API's shape (``detail``) and in OpenAI's (``error.message``, which its clients show)."""
    kind = {404: "not_found_error", 429: "rate_limit_error", 500: "server_error"}.get(err.status_code,
                                                                                    "invalid_request_error")
    return JSONResponse({"detail": err.detail, "error": {"message": err.detail, "type": kind, "param": None,
                                                          "code": err.status_code}}, status_code=err.status_code,
                        headers=err.headers)
