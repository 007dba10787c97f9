"""Server-sent events: a job's backlog of metric points and events, then new ones as they land.

Each SSE id is ``"<metric seq>:<event seq>"``, the position after that message, so a client reconnecting
with ``Last-Event-ID`` resumes exactly where it stopped. The stream ends (event ``end``) when the job has
ended and everything has been sent.

One :class:`JobTail` per job and API process polls the database and fans new rows out to every subscriber,
so the database load grows with the jobs being watched, not with the number of open streams.

A stream never goes silent: reads that fail because the database is unreachable are tried again with backoff,
and after ``stream_db_outage_s`` without it (or on any other failure of the tail) every subscriber gets an SSE
``error`` event and the stream closes, so the client reconnects and resumes from ``Last-Event-ID`` (the
browser's EventSource does so by itself). Every ``token_recheck_s`` a stream checks that its token was not
revoked, and ends with an ``error`` event if it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from store.db import MAX_SEQ, Job, JobEvent, MetricPoint
from store.jobs import FINAL
from store.settings import Settings

from .deps import Services, revocation_check
from .schemas.common import utc_iso

PAGE = 5000  # rows per read
DB_DOWN = (DBAPIError, PoolTimeout)  # the database unreachable (a dropped connection, a refused one, a full pool)
RETRY_CAP_S = 2.0  # the longest wait between two tries of a failed read: a database back is seen within this
log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Batch:
    """New rows of one job after a position (``after_metric``, ``after_event``), and the job's status when they
    were read."""

    status: str | None
    metrics: list[dict]
    events: list[dict]
    after_metric: int = 0
    after_event: int = 0

    def starts_after(self, metric: int, event: int, kinds: tuple[str, ...]) -> bool:
        """Whether rows after (``metric``, ``event``) of ``kinds`` could be missing from this batch: it was read
        from a later position (the tail's, while a subscriber was still reading its backlog)."""
        return ("metric" in kinds and self.after_metric > metric) or ("event" in kinds and self.after_event > event)


@dataclass
class Ended:
    """What a tail hands its subscribers when it stops before the job's end: why, for their ``error`` event."""

    detail: str


def error_message(detail: str) -> dict:
    """An SSE ``error`` event saying ``detail``; it has no id, so the client's Last-Event-ID stays on the last
    row it was sent."""
    return {"event": "error", "data": json.dumps({"detail": detail})}


def parse_last_event_id(value: str | None) -> tuple[int, int]:
    """``"12:3"`` -> (12, 3); anything else (a number past any seq too) -> (0, 0)."""
    try:
        metric, event = (int(part) for part in (value or "").split(":"))
    except ValueError:
        return 0, 0
    if max(metric, event) > MAX_SEQ:
        return 0, 0
    return max(metric, 0), max(event, 0)


def read_since(svc: Services, job_id: str, after_metric: int, after_event: int, limit: int = PAGE) -> Batch:
    """Rows of ``job_id`` after the given sequence numbers (blocking: call from a thread)."""
    with svc.sessions() as db:
        status = db.scalar(select(Job.status).where(Job.id == job_id))
        metrics = db.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.seq > after_metric)
                             .order_by(MetricPoint.seq).limit(limit))
        events = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after_event)
                            .order_by(JobEvent.seq).limit(limit))
        return Batch(status,
                     [{"seq": r.seq, "step": r.step, **r.values} for r in metrics],
                     [{"seq": r.seq, "step": r.step, "kind": r.kind, "message": r.message, "data": r.data,
                       "created_at": utc_iso(r.created_at)} for r in events],
                     after_metric, after_event)


def _positions(svc: Services, job_id: str) -> tuple[int, int]:
    with svc.sessions() as db:
        metric = db.scalar(select(func.max(MetricPoint.seq)).where(MetricPoint.job_id == job_id)) or 0
        event = db.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id)) or 0
    return metric, event


async def read_retrying(settings: Settings, read: Callable[..., T], *args) -> T:
    """``read(*args)`` (blocking, run in a thread), tried again with backoff while the database is unreachable;
    raises the last error once it has been unreachable for ``stream_db_outage_s``."""
    down_since, delay = None, settings.stream_poll_s
    while True:
        try:
            return await run_in_threadpool(read, *args)
        except DB_DOWN:
            down_since = down_since or time.monotonic()
            left = settings.stream_db_outage_s - (time.monotonic() - down_since)
            if left <= 0:
                raise
            await asyncio.sleep(min(delay, left))
            delay = min(2 * delay, RETRY_CAP_S)


def outage_detail(settings: Settings) -> str:
    """The ``error`` event's text when the database stayed unreachable."""
    return (f"the database was unreachable for {settings.stream_db_outage_s:g} s: reconnect with Last-Event-ID to "
            "resume")


class JobTail:
    """Polls one job's new rows and hands each batch to every subscriber's queue."""

    def __init__(self, svc: Services, job_id: str, hub: dict[str, JobTail]) -> None:
        self.svc, self.job_id, self.hub = svc, job_id, hub
        self.queues: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        settings = self.svc.settings
        try:
            metric, event = await read_retrying(settings, _positions, self.svc, self.job_id)
            while self.queues:
                batch = await read_retrying(settings, read_since, self.svc, self.job_id, metric, event)
                metric = batch.metrics[-1]["seq"] if batch.metrics else metric
                event = batch.events[-1]["seq"] if batch.events else event
                for queue in self.queues:
                    queue.put_nowait(batch)
                if batch.status in FINAL and not batch.metrics and not batch.events:
                    return
                if not batch.metrics and not batch.events:
                    await asyncio.sleep(settings.stream_poll_s)
        except Exception as err:  # ending the streams beats leaving them silent forever
            if not isinstance(err, DB_DOWN):
                log.exception("the live tail of job %s failed", self.job_id)
            ended = Ended(outage_detail(settings) if isinstance(err, DB_DOWN) else
                          "the live stream failed: reconnect with Last-Event-ID to resume")
            for queue in self.queues:
                queue.put_nowait(ended)
        finally:
            self.hub.pop(self.job_id, None)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.queues.add(queue)
        if self.task is None:
            self.task = asyncio.create_task(self.run())
        return queue


def _rows(batch: Batch, kinds: tuple[str, ...], metric: int, event: int) -> tuple[list[dict], int, int]:
    """The SSE messages of ``batch``'s rows of ``kinds`` after the position (``metric``, ``event``), and the
    position after them."""
    messages = []
    for name, rows in (("metric", batch.metrics), ("event", batch.events)):
        if name not in kinds:
            continue
        for row in rows:
            if row["seq"] <= (metric if name == "metric" else event):
                continue  # already sent from the backlog
            metric, event = (row["seq"], event) if name == "metric" else (metric, row["seq"])
            messages.append({"event": name, "id": f"{metric}:{event}", "data": json.dumps(row)})
    return messages, metric, event


async def _next(queue: asyncio.Queue, timeout: float) -> Batch | Ended | None:
    """The tail's next item for this subscriber, or None after ``timeout`` seconds without one.

    asyncio.wait, not wait_for: before Python 3.12 wait_for can swallow a cancel that lands as an item arrives, and
    on 3.10 its timeout is not the builtin TimeoutError."""
    getter = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait({getter}, timeout=max(timeout, 0.0))
    finally:
        if not getter.done():
            getter.cancel()  # an unfinished get takes nothing from the queue
    return getter.result() if getter.done() and not getter.cancelled() else None


async def _messages(request: Request, svc: Services, job_id: str, kinds: tuple[str, ...]) -> AsyncIterator[dict]:
    hub: dict[str, JobTail] = request.app.state.tails
    tail = hub.get(job_id) or hub.setdefault(job_id, JobTail(svc, job_id, hub))
    queue = tail.subscribe()  # before reading the backlog, so nothing lands in between unseen
    metric, event = parse_last_event_id(request.headers.get("last-event-id"))
    settings, revoked = svc.settings, revocation_check(request, svc)
    recheck_at = time.monotonic() + settings.token_recheck_s
    try:
        batch = await read_retrying(settings, read_since, svc, job_id, metric, event)
        while not isinstance(batch, Ended):
            if batch is not None:
                messages, metric, event = _rows(batch, kinds, metric, event)
                for message in messages:
                    yield message
                if batch.status in FINAL and len(batch.metrics) < PAGE and len(batch.events) < PAGE:
                    # the job's status is read before its rows and written after its last one: this batch holds
                    # every row left (waiting for the tail instead could wait for one that has ended already)
                    yield {"event": "end", "id": f"{metric}:{event}", "data": json.dumps({"status": batch.status})}
                    return
            if time.monotonic() >= recheck_at:
                if await run_in_threadpool(revoked):
                    yield error_message("the token of this stream was revoked")
                    return
                recheck_at = time.monotonic() + settings.token_recheck_s
            if batch is not None and (len(batch.metrics) >= PAGE or len(batch.events) >= PAGE):  # keep paging
                batch = await read_retrying(settings, read_since, svc, job_id, metric, event)
            else:  # the tail's next batch; when it was read from past our position, the rows between are read
                batch = await _next(queue, recheck_at - time.monotonic())
                if isinstance(batch, Batch) and batch.starts_after(metric, event, kinds):
                    batch = await read_retrying(settings, read_since, svc, job_id, metric, event)
        yield error_message(batch.detail)
    except DB_DOWN:
        yield error_message(outage_detail(settings))
    finally:
        tail.queues.discard(queue)


def job_stream(request: Request, svc: Services, job_id: str, kinds: tuple[str, ...]) -> EventSourceResponse:
    """The SSE response for one job; keep-alive comments every ``stream_keepalive_s``."""
    return EventSourceResponse(_messages(request, svc, job_id, kinds), ping=int(svc.settings.stream_keepalive_s))
