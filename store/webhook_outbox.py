"""The webhook outbox: the transaction that changes a job's state also writes one ``webhook_deliveries`` row per
endpoint of the job's owner that wants the event (:func:`record_job_event_for_webhooks`). The store's job state
machine (store/jobs.py) calls it for every end, cancel and pause of a job, and the runner for a ``budget`` event;
the API process's dispatcher (api/webhooks.py) sends the rows and retries them."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Job, WebhookDelivery, WebhookEndpoint, new_id, utcnow

WebhookEventType = Literal["job.succeeded", "job.failed", "job.cancelled", "job.budget_crossed", "job.paused",
                           "job.resumed"]
# a job's end status, pause or resume, or engine event kind -> the event type endpoints receive
EVENT_TYPES: dict[str, WebhookEventType] = {"succeeded": "job.succeeded", "failed": "job.failed",
                                            "cancelled": "job.cancelled", "budget": "job.budget_crossed",
                                            "paused": "job.paused", "resumed": "job.resumed"}

def job_payload(job: Job, event_type: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of a job event: ``{"type", "timestamp", "data": {job_id, name, status, ...}}``."""
    return {"type": event_type, "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
            "data": {"job_id": job.id, "name": job.name, "status": job.status, "step": job.step,
                     "max_steps": job.max_steps, "error": job.error, "stop_reason": job.stop_reason,
                     **(data or {})}}


def wants(endpoint: WebhookEndpoint, event_type: str) -> bool:
    """Whether ``endpoint`` subscribed to ``event_type`` (no list: every type)."""
    return not endpoint.events or event_type in endpoint.events


def record_job_event_for_webhooks(db: Session, job: Job, kind: str, data: dict[str, Any] | None = None) -> int:
    """Adds to ``db``'s transaction one pending delivery of ``job``'s event ``kind`` (succeeded, failed,
    cancelled, budget, paused, resumed) per endpoint of its owner that wants it; returns how many."""
    event_type = EVENT_TYPES[kind]
    endpoints = [e for e in db.scalars(select(WebhookEndpoint).where(WebhookEndpoint.owner == job.owner))
                 if wants(e, event_type)]
    payload = job_payload(job, event_type, data)
    for endpoint in endpoints:
        db.add(WebhookDelivery(id=new_id("msg"), endpoint_id=endpoint.id, job_id=job.id, event_type=event_type,
                               payload=payload, next_attempt_at=utcnow(), attempts_log=[]))
    return len(endpoints)
