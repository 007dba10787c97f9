"""Webhooks: an owner's endpoints receive job events, signed as Standard Webhooks (standardwebhooks.com) sign.

An outbox: the transaction that changes a job's state also writes one ``webhook_deliveries`` row per endpoint
that wants the event (store/webhook_outbox.py). The API process's :class:`WebhookDispatcher`
sends due rows and retries failures after ``MOL_WEBHOOK_RETRY_S``; a row is claimed by a compare-and-set on
``next_attempt_at``, so several API processes never send one attempt twice, and a process that dies mid-send
leaves a row that is retried once its claim lapses. Each attempt carries ``webhook-id`` (the delivery's id, the
same on every retry), ``webhook-timestamp`` (the attempt's Unix time) and ``webhook-signature``: ``v1,`` +
base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")), the secret being the base64 after ``whsec_``.

No owner can starve another: a dispatcher runs at most ``MOL_WEBHOOK_CONCURRENCY_PER_OWNER`` attempts of one owner
and ``MOL_WEBHOOK_CONCURRENCY_PER_ENDPOINT`` of one endpoint at once, and an endpoint whose attempts keep failing
cools down (its deliveries wait) for longer after each further failure (:class:`Lanes`). An owner has at most
``MOL_MAX_WEBHOOKS_PER_OWNER`` endpoints, and an attempt only goes to a public address (api/webhook_targets.py).
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
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from store.db import WebhookDelivery, WebhookEndpoint, new_id, utcnow
from store.settings import Settings

from .webhook_targets import AllowList, NoPublicAddress, pinned_request

log = logging.getLogger(__name__)

CLAIM_MARGIN_S = 30  # a claimed delivery is due again this long after its attempt's timeout (its sender died)
BATCH = 50  # deliveries one dispatcher round sends at most
PASSES = 8  # queries of one round: each skips the owners and endpoints that the one before filled


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


# --- the routes' store -------------------------------------------------------------------------------------

class TooManyEndpoints(Exception):
    """The owner already has the most endpoints allowed; the message names the limit."""


def create_endpoint(db: Session, owner: str, url: str, events: list[str] | None,
                    max_endpoints: int) -> WebhookEndpoint:
    """A new endpoint of ``owner`` with a fresh secret (committed); TooManyEndpoints when ``owner`` already has
    ``max_endpoints``."""
    count = db.scalar(select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.owner == owner))
    if count >= max_endpoints:
        raise TooManyEndpoints(f"you already have {count} webhook endpoints, the most allowed "
                               f"(MOL_MAX_WEBHOOKS_PER_OWNER={max_endpoints}); delete one before adding another")
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
class Due:
    """A pending delivery due now, with whose lanes an attempt at it takes."""

    id: str
    endpoint_id: str
    owner: str


@dataclass(frozen=True)
class Claimed:
    """A delivery a dispatcher took for one attempt."""

    id: str
    endpoint_id: str
    owner: str
    url: str
    secret: str
    payload: dict[str, Any]


def retry_wait_s(attempts: int, retry_s: list[float]) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones; None when no attempt is left."""
    return retry_s[attempts - 1] if attempts <= len(retry_s) else None


def due_now(sessions: sessionmaker, now: datetime, skip_endpoints: set[str], skip_owners: set[str],
            limit: int = BATCH) -> list[Due]:
    """Up to ``limit`` pending deliveries due at ``now``, the longest due first, none of an endpoint in
    ``skip_endpoints`` or of an owner in ``skip_owners`` (so one owner's backlog hides no other owner's row)."""
    query = (select(WebhookDelivery.id, WebhookDelivery.endpoint_id, WebhookEndpoint.owner)
             .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
             .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now))
    if skip_endpoints:
        query = query.where(WebhookDelivery.endpoint_id.not_in(sorted(skip_endpoints)))
    if skip_owners:
        query = query.where(WebhookEndpoint.owner.not_in(sorted(skip_owners)))
    with sessions() as db:
        return [Due(*row) for row in db.execute(query.order_by(WebhookDelivery.next_attempt_at).limit(limit))]


def claim(sessions: sessionmaker, due: list[Due], now: datetime, hold_s: float) -> list[Claimed | None]:
    """Takes each of ``due``, pushed ``hold_s`` into the future by one compare-and-set; None for a row another
    dispatcher took first (no longer due)."""
    claimed: list[Claimed | None] = []
    for item in due:
        with sessions.begin() as db:
            taken = db.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == item.id, WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now).values(next_attempt_at=now + timedelta(seconds=hold_s)))
            delivery = db.get(WebhookDelivery, item.id) if taken.rowcount == 1 else None
            endpoint = db.get(WebhookEndpoint, delivery.endpoint_id) if delivery is not None else None
            claimed.append(None if endpoint is None else Claimed(
                delivery.id, endpoint.id, endpoint.owner, endpoint.url, endpoint.secret, delivery.payload))
    return claimed


def record_attempt(sessions: sessionmaker, delivery_id: str, outcome: dict[str, Any], retry_s: list[float],
                   not_before: datetime | None = None) -> None:
    """Logs one attempt's ``outcome`` (``ok``, ``outcome``, ``status_code``, ``error``, ``duration_ms``) on the
    delivery: succeeded on a 2xx, else due again after the next wait (and not before ``not_before``, the end of
    its endpoint's cool-down), or failed when no attempt is left."""
    with sessions.begin() as db:
        delivery = db.get(WebhookDelivery, delivery_id)
        if delivery is None:  # its endpoint was deleted meanwhile
            return
        delivery.attempts += 1
        now = utcnow()
        entry = {"attempt": delivery.attempts, "at": now.isoformat().replace("+00:00", "Z"),
                 **{key: outcome.get(key) for key in ("outcome", "status_code", "error", "duration_ms")}}
        delivery.attempts_log = [*delivery.attempts_log, entry]
        wait = None if outcome["ok"] else retry_wait_s(delivery.attempts, retry_s)
        if outcome["ok"]:
            delivery.status = "succeeded"
        elif wait is None:
            delivery.status = "failed"
        else:
            delivery.next_attempt_at = max(now + timedelta(seconds=wait), not_before or now)


def coarse_outcome(ok: bool, outcome: str, status_code: int | None = None) -> dict[str, Any]:
    """An attempt's outcome as the log keeps it: ``delivered``, ``http_error`` (with the status and its class),
    ``timeout``, ``connection_failed`` or ``no_public_address``; never an exception's text, which would tell a
    closed port from a reset or a protocol error (a port scan through the log)."""
    error = None if ok else f"http_error {status_code // 100}xx" if status_code else outcome
    return {"ok": ok, "outcome": outcome, "status_code": status_code, "error": error}


async def post_pinned(client: httpx.AsyncClient, urls: list[httpx.URL], host: dict[str, str],
                      extensions: dict[str, object], body: bytes, headers: dict[str, str]) -> int:
    """The status of a POST of ``body`` to the first of ``urls`` (one per checked address) that takes a connection;
    the last connection error when none does."""
    for i, url in enumerate(urls):
        try:
            async with client.stream("POST", url, content=body, headers=headers | host,
                                     extensions=extensions) as answer:
                return answer.status_code
        except httpx.ConnectError:
            if i == len(urls) - 1:
                raise
    raise httpx.ConnectError("no address")  # never: public_addresses gives at least one


async def send(client: httpx.AsyncClient, claimed: Claimed, allow: AllowList, timeout_s: float) -> dict[str, Any]:
    """One attempt, at most ``timeout_s`` in all: POST the signed payload to the checked address of its URL's host
    (its answer's body is never read); the outcome as :func:`record_attempt` logs it."""
    body = json.dumps(claimed.payload, separators=(",", ":")).encode()
    headers = signed_headers(claimed.secret, claimed.id, body, int(time.time()))
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            code = await post_pinned(client, *await pinned_request(claimed.url, allow), body, headers)
        outcome = coarse_outcome(200 <= code < 300, "delivered" if 200 <= code < 300 else "http_error", code)
    except NoPublicAddress:
        outcome = coarse_outcome(False, "no_public_address")
    except (TimeoutError, httpx.TimeoutException):
        outcome = coarse_outcome(False, "timeout")
    except (httpx.HTTPError, httpx.InvalidURL):  # refused, reset, a protocol error, a bad certificate: all one
        outcome = coarse_outcome(False, "connection_failed")
    return outcome | {"duration_ms": round((time.monotonic() - start) * 1000)}


class Lanes:
    """A dispatcher's attempts in flight by owner and by endpoint, and each endpoint's run of failed attempts: who
    may have another attempt started now. Held in memory: a restarted dispatcher starts with every endpoint warm."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owners: Counter[str] = Counter()
        self.endpoints: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.cooling_until: dict[str, datetime] = {}

    def full_owners(self) -> set[str]:
        """Owners with ``webhook_concurrency_per_owner`` attempts in flight."""
        return {o for o, n in self.owners.items() if n >= self.settings.webhook_concurrency_per_owner}

    def closed_endpoints(self, now: datetime) -> set[str]:
        """Endpoints with ``webhook_concurrency_per_endpoint`` attempts in flight, or cooling down at ``now``."""
        full = {e for e, n in self.endpoints.items() if n >= self.settings.webhook_concurrency_per_endpoint}
        return full | {e for e, until in self.cooling_until.items() if until > now}

    def take(self, due: Due) -> bool:
        """Counts an attempt at ``due`` in flight when its owner and endpoint have room; whether they had."""
        if (self.owners[due.owner] >= self.settings.webhook_concurrency_per_owner
                or self.endpoints[due.endpoint_id] >= self.settings.webhook_concurrency_per_endpoint):
            return False
        self.owners[due.owner] += 1
        self.endpoints[due.endpoint_id] += 1
        return True

    def release(self, owner: str, endpoint_id: str) -> None:
        """An attempt of ``owner`` at ``endpoint_id`` ended."""
        self.owners[owner] -= 1
        self.endpoints[endpoint_id] -= 1
        for counter, key in ((self.owners, owner), (self.endpoints, endpoint_id)):
            if counter[key] <= 0:
                del counter[key]

    def record(self, endpoint_id: str, ok: bool) -> datetime | None:
        """Notes an attempt's result; returns when the endpoint's cool-down ends, when it starts one: after
        ``webhook_failures_before_cooldown`` failures in a row, ``webhook_cooldown_s``, doubled by each further
        failure up to ``webhook_cooldown_max_s``. A success ends the run."""
        if ok:
            self.failures.pop(endpoint_id, None)
            self.cooling_until.pop(endpoint_id, None)
            return None
        self.failures[endpoint_id] += 1
        beyond = self.failures[endpoint_id] - self.settings.webhook_failures_before_cooldown
        if beyond < 0:
            return None
        wait = min(self.settings.webhook_cooldown_s * 2 ** min(beyond, 32), self.settings.webhook_cooldown_max_s)
        self.cooling_until[endpoint_id] = utcnow() + timedelta(seconds=wait)
        return self.cooling_until[endpoint_id]


class WebhookDispatcher:
    """Sends due deliveries on the API's event loop, looking for them every ``webhook_poll_s``: HTTP with an async
    client, the database calls in threads, so it never blocks a request. Each attempt is a task of its own, so an
    endpoint that is slow to answer holds up no other delivery; at most ``BATCH`` are in flight, and no more than
    :class:`Lanes` allows of one owner or endpoint."""

    def __init__(self, sessions: sessionmaker, settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings
        self.in_flight: set[asyncio.Task] = set()
        self.lanes = Lanes(settings)
        self.lane_freed = asyncio.Event()  # an attempt ended: the deliveries queued behind it need not wait a poll

    async def attempt(self, client: httpx.AsyncClient, claimed: Claimed) -> None:
        """One attempt at ``claimed``, logged on its row; its lanes are freed when it ends, however it ends."""
        try:
            allow = AllowList.parse(self.settings.webhook_allow_hosts)
            outcome = await send(client, claimed, allow, self.settings.webhook_timeout_s)
            cooled = self.lanes.record(claimed.endpoint_id, outcome["ok"])
            await asyncio.to_thread(record_attempt, self.sessions, claimed.id, outcome, self.settings.webhook_retry_s,
                                    cooled)
        except Exception:  # the database away: the claim lapses and the attempt is made again
            log.exception("webhook delivery %s: the attempt could not be recorded", claimed.id)
        finally:
            self.lanes.release(claimed.owner, claimed.endpoint_id)
            self.lane_freed.set()

    async def dispatch_due(self, client: httpx.AsyncClient) -> int:
        """Starts an attempt for each delivery due now whose owner and endpoint have room (as many as fit under
        ``BATCH``); returns how many."""
        hold, started = self.settings.webhook_timeout_s + CLAIM_MARGIN_S, 0
        for _ in range(PASSES):
            room, now = BATCH - len(self.in_flight), utcnow()
            if room <= 0:
                break
            due = await asyncio.to_thread(due_now, self.sessions, now, self.lanes.closed_endpoints(now),
                                          self.lanes.full_owners())
            picked = []
            for item in due:
                if len(picked) < room and self.lanes.take(item):
                    picked.append(item)
            try:
                claimed = await asyncio.to_thread(claim, self.sessions, picked, now, hold) if picked else []
            except BaseException:  # none of them started: their lanes are free again
                for item in picked:
                    self.lanes.release(item.owner, item.endpoint_id)
                raise
            for item, taken in zip(picked, claimed, strict=True):
                if taken is None:
                    self.lanes.release(item.owner, item.endpoint_id)
                    continue
                task = asyncio.create_task(self.attempt(client, taken))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
                started += 1
            if len(due) < BATCH:  # nothing else is due
                break
        return started

    async def next_round(self) -> None:
        """Waits ``webhook_poll_s``, or less when an attempt ends first: one endpoint's deliveries go one after
        another (``webhook_concurrency_per_endpoint``), each as soon as the one before it is done, not one a poll."""
        # asyncio.wait, not wait_for: on Python < 3.12 wait_for swallows a cancel that lands as the event is set,
        # and the app's shutdown, which cancels this task and awaits it, then waits forever
        freed = asyncio.ensure_future(self.lane_freed.wait())
        try:
            await asyncio.wait({freed}, timeout=self.settings.webhook_poll_s)
        finally:
            freed.cancel()
        self.lane_freed.clear()

    async def run(self) -> None:
        """Dispatches until cancelled (attempts in flight are dropped then: their claims lapse and they are made
        again); a failing round (the database away) is logged and tried again. No connection is kept alive: each
        attempt connects to the address checked for it."""
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s, follow_redirects=False,
                                     limits=limits) as client:
            try:
                while True:
                    try:
                        await self.dispatch_due(client)
                    except Exception:
                        log.exception("webhook dispatch failed; trying again in %s s", self.settings.webhook_poll_s)
                    await self.next_round()
            finally:
                for task in list(self.in_flight):
                    task.cancel()
