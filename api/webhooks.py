"""Webhooks: an owner's endpoints receive job events, signed as Standard Webhooks (standardwebhooks.com) sign.

An outbox: the transaction that changes a job's state also writes one ``webhook_deliveries`` row per endpoint
that wants the event (:func:`record_job_event_for_webhooks`, called by worker/runner.py ``finish`` and its
``budget`` event, and by api/job_store.py for every cancel). The API process's :class:`WebhookDispatcher`
sends due rows and retries failures after ``MOL_WEBHOOK_RETRY_S``; a row is claimed by a compare-and-set on
``next_attempt_at``, so several API processes never send one attempt twice, and a process that dies mid-send
leaves a row that is retried once its claim lapses. Each attempt carries ``webhook-id`` (the delivery's id, the
same on every retry), ``webhook-timestamp`` (the attempt's Unix time) and ``webhook-signature``: ``v1,`` +
base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")), the secret being the base64 after ``whsec_``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from .db import Job, WebhookDelivery, WebhookEndpoint, new_id, utcnow
from .settings import Settings

log = logging.getLogger(__name__)

WebhookEventType = Literal["job.succeeded", "job.failed", "job.cancelled", "job.budget_crossed"]
# a job's end status or engine event kind -> the event type endpoints receive
EVENT_TYPES: dict[str, WebhookEventType] = {"succeeded": "job.succeeded", "failed": "job.failed",
                                            "cancelled": "job.cancelled", "budget": "job.budget_crossed"}
CLAIM_MARGIN_S = 30  # a claimed delivery is due again this long after its attempt's timeout (its sender died)
BATCH = 50  # deliveries one dispatcher round sends at most


def new_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` of ``body``: ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers of one attempt at sending ``body``."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body), "content-type": "application/json",
            "user-agent": "mol-studio-webhooks/1"}


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
    cancelled, budget) per endpoint of its owner that wants it; returns how many."""
    event_type = EVENT_TYPES[kind]
    endpoints = [e for e in db.scalars(select(WebhookEndpoint).where(WebhookEndpoint.owner == job.owner))
                 if wants(e, event_type)]
    payload = job_payload(job, event_type, data)
    for endpoint in endpoints:
        db.add(WebhookDelivery(id=new_id("msg"), endpoint_id=endpoint.id, job_id=job.id, event_type=event_type,
                               payload=payload, next_attempt_at=utcnow(), attempts_log=[]))
    return len(endpoints)


# --- the routes' store -------------------------------------------------------------------------------------

def create_endpoint(db: Session, owner: str, url: str, events: list[str] | None) -> WebhookEndpoint:
    """A new endpoint of ``owner`` with a fresh secret (committed)."""
    endpoint = WebhookEndpoint(id=new_id("wh"), owner=owner, url=url, events=list(dict.fromkeys(events or [])),
                               secret=new_secret(), created_at=utcnow())
    db.add(endpoint)
    db.commit()
    return endpoint


def owned_endpoint(db: Session, owner: str, endpoint_id: str) -> WebhookEndpoint | None:
    """The endpoint if ``owner`` has it, else None."""
    endpoint = db.get(WebhookEndpoint, endpoint_id)
    return endpoint if endpoint is not None and endpoint.owner == owner else None


def endpoints_of(db: Session, owner: str) -> list[WebhookEndpoint]:
    """``owner``'s endpoints, oldest first."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.owner == owner)
    return list(db.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def deliveries_of(db: Session, endpoint_id: str, limit: int) -> list[WebhookDelivery]:
    """The endpoint's newest ``limit`` deliveries, newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    return list(db.scalars(query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
                           .limit(limit)))


# --- the dispatcher ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claimed:
    """A delivery a dispatcher took for one attempt."""

    id: str
    url: str
    secret: str
    payload: dict[str, Any]


def retry_wait_s(attempts: int, retry_s: list[float]) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones; None when no attempt is left."""
    return retry_s[attempts - 1] if attempts <= len(retry_s) else None


def claim_due(sessions: sessionmaker, now: datetime, hold_s: float, limit: int = BATCH) -> list[Claimed]:
    """Takes up to ``limit`` pending deliveries due at ``now``, each pushed ``hold_s`` into the future by one
    compare-and-set (a row another dispatcher took first is no longer due, and is skipped)."""
    with sessions() as db:
        due = db.scalars(select(WebhookDelivery.id).where(WebhookDelivery.status == "pending",
                                                          WebhookDelivery.next_attempt_at <= now)
                         .order_by(WebhookDelivery.next_attempt_at).limit(limit)).all()
    claimed = []
    for delivery_id in due:
        with sessions.begin() as db:
            taken = db.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now).values(next_attempt_at=now + timedelta(seconds=hold_s)))
            if taken.rowcount != 1:
                continue
            delivery = db.get(WebhookDelivery, delivery_id)
            endpoint = db.get(WebhookEndpoint, delivery.endpoint_id)
            claimed.append(Claimed(delivery.id, endpoint.url, endpoint.secret, delivery.payload))
    return claimed


def record_attempt(sessions: sessionmaker, delivery_id: str, outcome: dict[str, Any], retry_s: list[float]) -> None:
    """Logs one attempt's ``outcome`` (``ok``, ``status_code``, ``error``, ``duration_ms``) on the delivery:
    succeeded on a 2xx, else due again after the next wait, or failed when no attempt is left."""
    with sessions.begin() as db:
        delivery = db.get(WebhookDelivery, delivery_id)
        if delivery is None:  # its endpoint was deleted meanwhile
            return
        delivery.attempts += 1
        now = utcnow()
        entry = {"attempt": delivery.attempts, "at": now.isoformat().replace("+00:00", "Z"),
                 **{key: outcome.get(key) for key in ("status_code", "error", "duration_ms")}}
        delivery.attempts_log = [*delivery.attempts_log, entry]
        wait = None if outcome["ok"] else retry_wait_s(delivery.attempts, retry_s)
        if outcome["ok"]:
            delivery.status = "succeeded"
        elif wait is None:
            delivery.status = "failed"
        else:
            delivery.next_attempt_at = now + timedelta(seconds=wait)


async def send(client: httpx.AsyncClient, claimed: Claimed) -> dict[str, Any]:
    """One attempt: POST the signed payload; the outcome as :func:`record_attempt` logs it."""
    body = json.dumps(claimed.payload, separators=(",", ":")).encode()
    headers = signed_headers(claimed.secret, claimed.id, body, int(time.time()))
    start = time.monotonic()
    try:
        answer = await client.post(claimed.url, content=body, headers=headers)
        ok, code, error = answer.is_success, answer.status_code, None if answer.is_success else answer.reason_phrase
    except httpx.HTTPError as err:  # refused, timed out, a bad host
        ok, code, error = False, None, f"{type(err).__name__}: {err}"[:500]
    return {"ok": ok, "status_code": code, "error": error, "duration_ms": round((time.monotonic() - start) * 1000)}


class WebhookDispatcher:
    """Sends due deliveries on the API's event loop, looking for them every ``webhook_poll_s``: HTTP with an async
    client, the database calls in threads, so it never blocks a request. Each attempt is a task of its own, so an
    endpoint that is slow to answer holds up no other delivery; at most ``BATCH`` are in flight."""

    def __init__(self, sessions: sessionmaker, settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings
        self.in_flight: set[asyncio.Task] = set()

    async def attempt(self, client: httpx.AsyncClient, claimed: Claimed) -> None:
        """One attempt at ``claimed``, logged on its row."""
        try:
            outcome = await send(client, claimed)
            await asyncio.to_thread(record_attempt, self.sessions, claimed.id, outcome, self.settings.webhook_retry_s)
        except Exception:  # the database away: the claim lapses and the attempt is made again
            log.exception("webhook delivery %s: the attempt could not be recorded", claimed.id)

    async def dispatch_due(self, client: httpx.AsyncClient) -> int:
        """Starts an attempt for each delivery due now (as many as fit under ``BATCH``); returns how many."""
        hold = self.settings.webhook_timeout_s + CLAIM_MARGIN_S
        room = BATCH - len(self.in_flight)
        claimed = await asyncio.to_thread(claim_due, self.sessions, utcnow(), hold, room) if room > 0 else []
        for item in claimed:
            task = asyncio.create_task(self.attempt(client, item))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        return len(claimed)

    async def run(self) -> None:
        """Dispatches until cancelled (attempts in flight are dropped then: their claims lapse and they are made
        again); a failing round (the database away) is logged and tried again."""
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s, follow_redirects=False) as client:
            try:
                while True:
                    try:
                        await self.dispatch_due(client)
                    except Exception:
                        log.exception("webhook dispatch failed; trying again in %s s", self.settings.webhook_poll_s)
                    await asyncio.sleep(self.settings.webhook_poll_s)
            finally:
                for task in list(self.in_flight):
                    task.cancel()
