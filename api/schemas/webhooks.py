"""Webhooks: an owner's endpoints and their deliveries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from store.webhook_outbox import WebhookEventType

from .common import UtcDatetime


class WebhookIn(BaseModel):
    """A webhook endpoint to create: an http(s) URL and the event types it wants (none: all)."""

    model_config = ConfigDict(extra="forbid")
    url: HttpUrl = Field(description="http or https URL that receives signed POSTs",
                         examples=["https://ci.example.com/hooks/mol"])
    events: list[WebhookEventType] | None = Field(None, max_length=10, description="event types; null: all")


class WebhookOut(BaseModel):
    """A webhook endpoint (its secret is shown only when it is created)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    url: str
    events: list[str]
    created_at: UtcDatetime


class WebhookCreated(WebhookOut):
    """The new endpoint with its signing secret (``whsec_…``): shown this once, keep it to verify deliveries."""

    secret: str


class WebhookAttemptOut(BaseModel):
    """One attempt, logged coarsely: ``outcome`` is delivered, http_error, timeout, connection_failed or
    no_public_address (null on attempts logged before it was kept); ``error`` says the same in words."""

    attempt: int
    at: str
    outcome: str | None = None
    status_code: int | None
    error: str | None
    duration_ms: int | None


class WebhookDeliveryOut(BaseModel):
    """One event sent (or still to send) to an endpoint, with every attempt; ``id`` is its ``webhook-id``."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    event_type: str
    job_id: str | None
    status: str  # pending, succeeded, failed
    attempts: int
    attempts_log: list[WebhookAttemptOut]
    next_attempt_at: UtcDatetime | None = Field(validation_alias="due_at")  # null once it ended
    created_at: UtcDatetime
    payload: dict[str, Any]
