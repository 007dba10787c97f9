"""POST /v1/session: the dashboard trades its token for an HttpOnly cookie, so EventSource can authenticate."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..auth import COOKIE
from ..deps import Owner
from ..schemas.common import errors
from ..schemas.service import SessionOut

router = APIRouter(tags=["session"])


@router.post("/v1/session", response_model=SessionOut, responses=errors(401, 403))
def sign_in(owner: Owner, request: Request, response: Response) -> dict:
    """Checks the bearer token, sets it as a same-site HttpOnly cookie, and names its owner."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    if token:
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
    return {"owner": owner}


@router.delete("/v1/session", status_code=204)
def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")
