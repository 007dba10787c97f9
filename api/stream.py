"""Server-sent events: a job's backlog of metric points and events, then new ones as they land.

Each SSE id is ``"<metric seq>:<event seq>"``, the position after that message, so a client reconnecting
with ``Last-Event-ID`` resumes exactly where it stopped. The stream ends (event ``end``) when the job has
ended and everything has been sent.

One :class:`JobTail` per job and API process polls the database and fans new rows out to every subscriber,
so the database load grows with the jobs being watched, not with the number of open streams.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import func, select
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .db import MAX_SEQ, Job, JobEvent, MetricPoint
from .deps import Services
from .schemas import utc_iso

FINAL = ("succeeded", "failed", "cancelled")
PAGE = 5000  # rows per read


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


class JobTail:
    """Polls one job's new rows and hands each batch to every subscriber's queue."""

    def __init__(self, svc: Services, job_id: str, hub: dict[str, JobTail]) -> None:
        self.svc, self.job_id, self.hub = svc, job_id, hub
        self.queues: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        metric, event = await run_in_threadpool(_positions, self.svc, self.job_id)
        try:
            while self.queues:
                batch = await run_in_threadpool(read_since, self.svc, self.job_id, metric, event)
                metric = batch.metrics[-1]["seq"] if batch.metrics else metric
                event = batch.events[-1]["seq"] if batch.events else event
                for queue in self.queues:
                    queue.put_nowait(batch)
                if batch.status in FINAL and not batch.metrics and not batch.events:
                    return
                if not batch.metrics and not batch.events:
                    await asyncio.sleep(self.svc.settings.stream_poll_s)
        finally:
            self.hub.pop(self.job_id, None)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.queues.add(queue)
        if self.task is None:
            self.task = asyncio.create_task(self.run())
        return queue


async def _messages(request: Request, svc: Services, job_id: str, kinds: tuple[str, ...]) -> AsyncIterator[dict]:
    hub: dict[str, JobTail] = request.app.state.tails
    tail = hub.get(job_id) or hub.setdefault(job_id, JobTail(svc, job_id, hub))
    queue = tail.subscribe()  # before reading the backlog, so nothing lands in between unseen
    metric, event = parse_last_event_id(request.headers.get("last-event-id"))
    try:
        batch = await run_in_threadpool(read_since, svc, job_id, metric, event)
        while True:
            for name, rows in (("metric", batch.metrics), ("event", batch.events)):
                if name not in kinds:
                    continue
                for row in rows:
                    if row["seq"] <= (metric if name == "metric" else event):
                        continue  # already sent from the backlog
                    metric, event = (row["seq"], event) if name == "metric" else (metric, row["seq"])
                    yield {"event": name, "id": f"{metric}:{event}", "data": json.dumps(row)}
            if batch.status in FINAL and not batch.metrics and not batch.events:
                yield {"event": "end", "id": f"{metric}:{event}", "data": json.dumps({"status": batch.status})}
                return
            if len(batch.metrics) >= PAGE or len(batch.events) >= PAGE:  # a long backlog: keep paging
                batch = await run_in_threadpool(read_since, svc, job_id, metric, event)
            else:
                batch = await queue.get()
                if batch.starts_after(metric, event, kinds):  # rows between our position and the tail's: read them
                    batch = await run_in_threadpool(read_since, svc, job_id, metric, event)
    finally:
        tail.queues.discard(queue)


def job_stream(request: Request, svc: Services, job_id: str, kinds: tuple[str, ...]) -> EventSourceResponse:
    """The SSE response for one job; keep-alive comments every ``stream_keepalive_s``."""
    return EventSourceResponse(_messages(request, svc, job_id, kinds), ping=int(svc.settings.stream_keepalive_s))
