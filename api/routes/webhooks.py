"""POST/GET/DELETE /v1/webhooks and GET /v1/webhooks/{id}/deliveries: an owner's endpoints and their delivery log
(the sending happens in api/webhooks.py's dispatcher, never in a request)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from store.db import WebhookDelivery, WebhookEndpoint, is_id

from ..deps import DB, Owner, Svc
from ..schemas.common import errors
from ..schemas.webhooks import WebhookCreated, WebhookDeliveryOut, WebhookIn, WebhookOut
from ..webhook_targets import AllowList, url_problem
from ..webhooks import TooManyEndpoints, create_endpoint, deliveries_of, endpoints_of, owned_endpoint

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=errors(401, 422))


def _owned(db, owner: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = owned_endpoint(db, owner, endpoint_id) if is_id(endpoint_id) else None
    if endpoint is None:
        raise HTTPException(404, f"webhook '{endpoint_id}' not found")
    return endpoint


@router.post("", status_code=201, response_model=WebhookCreated, responses=errors(400, 403, 409))
def create_webhook(body: WebhookIn, owner: Owner, db: DB, svc: Svc) -> WebhookEndpoint:
    """A new endpoint (a URL whose host is a public address or a name; loopback, private, link-local and other
    internal addresses are refused); the answer holds its signing secret, which is never shown again."""
    settings = svc.settings
    problem = url_problem(str(body.url), AllowList.parse(settings.webhook_allow_hosts))
    if problem:
        raise HTTPException(422, problem)
    try:
        return create_endpoint(db, owner, str(body.url), body.events, settings.max_webhooks_per_owner)
    except TooManyEndpoints as err:
        raise HTTPException(409, str(err)) from None


@router.get("", response_model=list[WebhookOut])
def list_webhooks(owner: Owner, db: DB) -> list[WebhookEndpoint]:
    return endpoints_of(db, owner)


@router.delete("/{endpoint_id}", status_code=204, responses=errors(403, 404))
def delete_webhook(endpoint_id: str, owner: Owner, db: DB) -> None:
    """Deletes the endpoint with its delivery log; pending deliveries are not sent."""
    db.delete(_owned(db, owner, endpoint_id))
    db.commit()


@router.get("/{endpoint_id}/deliveries", response_model=list[WebhookDeliveryOut], responses=errors(404))
def list_deliveries(endpoint_id: str, owner: Owner, db: DB,
                    limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[WebhookDelivery]:
    """The endpoint's newest deliveries first, each with its attempts."""
    return deliveries_of(db, _owned(db, owner, endpoint_id).id, limit)
