"""Which queued job runs next: fair share across owners, then priority, then age; and each queued job's place.

A Celery message on a job queue is a *token* for that queue (its process count), not an order to run one job:
the worker that takes it asks :func:`take_next` for the job to run at that moment. The order (:func:`queue_order`,
pure) is:

1. **fair share**: the owner with the fewest jobs running goes first; between owners running as many, the one
   served least recently (whose newest job started longest ago, or never) goes first;
2. **priority**: an owner's own jobs by ``priority``, highest first (bounded per owner by ``max_priority``, so a
   priority orders an owner's work and breaks ties between owners equally served, and never buys a larger share);
3. **age**: then the oldest first (``created_at``, then id).

An owner with ``running_jobs`` jobs running (store/quotas.py) is skipped: their jobs wait, their reason on the job.
Each job taken counts as one more running and as the owner's newest start, so the order the function gives for a
whole queue is the order in which tokens would take it: owners in turn, one job each. With one worker, an owner who
submits 50 jobs delays another owner's single job by at most the one job that is running when it arrives.

The API shows each queued job's place in that order (:func:`queue_places`, one read of the queued set).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .db import IdempotencyKey, Job, utcnow
from .jobs import IDEMPOTENCY_TTL, acquire_lease
from .leases import as_utc
from .quotas import SETTING_OF, QuotaExceeded, limits_for
from .settings import Settings

MAX_TAKE_TRIES = 10  # choices retried after another worker leased the chosen job first


@dataclass(frozen=True)
class Waiting:
    """A queued job as the scheduler sees it."""

    id: str
    owner: str
    nproc: int
    priority: int
    created_at: datetime


@dataclass(frozen=True)
class QueueState:
    """What the order is decided from: the queued jobs, and per owner the jobs running and the newest start."""

    waiting: list[Waiting]
    running: dict[str, int]
    last_start: dict[str, datetime]


@dataclass(frozen=True)
class Placed:
    """A queued job in the order the scheduler takes its queue: 1-based ``position`` among the queued jobs of its
    process count, and whether its owner already runs as many jobs as they may (``held``: it waits for one of them
    to end, whatever its place)."""

    job: Waiting
    position: int
    held: bool


def queue_order(waiting: Iterable[Waiting], running: dict[str, int], last_start: dict[str, datetime],
                running_limit: Callable[[str], int]) -> list[Placed]:
    """``waiting`` (jobs of one queue) in the order the scheduler would take them (see the module's docstring):
    owners by (held, running, least recently served), each owner's jobs by (priority desc, age). Each job placed
    counts as one more running job of its owner and as their newest start; an owner at ``running_limit(owner)``
    jobs now is ``held``, their jobs after every other owner's."""
    own: dict[str, list[Waiting]] = {}
    for job in sorted(waiting, key=lambda j: (-j.priority, as_utc(j.created_at), j.id)):
        own.setdefault(job.owner, []).append(job)
    busy = {owner: running.get(owner, 0) for owner in own}
    limit = {owner: running_limit(owner) for owner in own}
    served = {owner: (0, as_utc(last_start[owner]).timestamp()) if last_start.get(owner) else (-1, 0.0)
              for owner in own}
    heads = {owner: 0 for owner in own}

    def key(owner: str) -> tuple:
        head = own[owner][heads[owner]]
        return (busy[owner] >= limit[owner], busy[owner], served[owner], -head.priority,
                as_utc(head.created_at), head.id)

    heap = [(key(owner), owner) for owner in own]
    heapq.heapify(heap)
    order: list[Placed] = []
    while heap:
        _, owner = heapq.heappop(heap)
        job = own[owner][heads[owner]]
        order.append(Placed(job, len(order) + 1, running.get(owner, 0) >= limit[owner]))
        heads[owner] += 1
        busy[owner] += 1
        served[owner] = (1, float(len(order)))  # served now: after every owner served before this pass
        if heads[owner] < len(own[owner]):
            heapq.heappush(heap, (key(owner), owner))
    return order


def read_state(db: Session, nproc: int | None = None) -> QueueState:
    """The queued jobs (of ``nproc`` processes, or all) that no cancel or pause is pending for, the running jobs per
    owner, and the newest start of each owner with a queued job: three short queries, none per job."""
    nproc_of = func.coalesce(Job.spec["nproc"].as_integer(), 1)
    query = (select(Job.id, Job.owner, nproc_of, func.coalesce(Job.spec["priority"].as_integer(), 0), Job.created_at)
             .where(Job.status == "queued", Job.cancel_requested.is_(False),
                    Job.pause_requested.is_(False)))
    if nproc is not None:
        query = query.where(nproc_of == nproc)
    waiting = [Waiting(*row) for row in db.execute(query)]
    running = dict(db.execute(select(Job.owner, func.count()).where(Job.status == "running").group_by(Job.owner)).all())
    owners = {job.owner for job in waiting}
    last_start = dict(db.execute(select(Job.owner, func.max(Job.started_at))
                                 .where(Job.owner.in_(owners), Job.started_at.is_not(None))
                                 .group_by(Job.owner)).all()) if owners else {}
    return QueueState(waiting, running, last_start)


def _limit_of(settings: Settings) -> Callable[[str], int]:
    return lambda owner: limits_for(settings, owner).running_jobs


def next_job(db: Session, settings: Settings, nproc: int) -> tuple[str | None, int]:
    """(the job a free worker takes now from the queue of ``nproc`` processes, or None; how many jobs that queue
    holds): None with jobs queued means every one of them belongs to an owner at their running limit."""
    state = read_state(db, nproc)
    order = queue_order(state.waiting, state.running, state.last_start, _limit_of(settings))
    first = next((placed.job.id for placed in order if not placed.held), None)
    return first, len(order)


def take_next(sessions: sessionmaker, settings: Settings, nproc: int, holder: str) -> str | None:
    """The job of ``nproc`` processes that ``holder`` now holds the lease of (store.jobs.acquire_lease, a
    compare-and-set), chosen by :func:`queue_order`; None when none may run now. A choice another worker leased
    first is made again."""
    for _ in range(MAX_TAKE_TRIES):
        with sessions() as db:
            job_id, _ = next_job(db, settings, nproc)
        if job_id is None:
            return None
        if acquire_lease(sessions, job_id, holder, settings.lease_timeout_s):
            return job_id
    return None


@dataclass(frozen=True)
class Place:
    """A queued job's place, as GET /v1/jobs shows it."""

    position: int
    reason: str


def queue_places(db: Session, settings: Settings) -> dict[str, Place]:
    """Every queued job's place in the order of its queue and why it waits, by job id (one read of the queue)."""
    state = read_state(db)
    queues: dict[int, list[Waiting]] = {}
    for job in state.waiting:
        queues.setdefault(job.nproc, []).append(job)
    places = {}
    for jobs in queues.values():
        for placed in queue_order(jobs, state.running, state.last_start, _limit_of(settings)):
            places[placed.job.id] = Place(placed.position, _reason(placed, state.running, settings))
    return places


def _reason(placed: Placed, running: dict[str, int], settings: Settings) -> str:
    """Why a queued job waits, in words."""
    if placed.held:
        limit = limits_for(settings, placed.job.owner).running_jobs
        return (f"owner limit: {running.get(placed.job.owner, 0)} of your jobs are running, the most you may run "
                f"at once ({SETTING_OF['running_jobs']} = {limit}, or MOL_OWNER_LIMITS for you); it starts when "
                "one of them ends")
    ahead = placed.position - 1
    processes = f" with {placed.job.nproc} processes" if placed.job.nproc > 1 else ""
    return f"waiting for a free worker{processes}: {ahead} job{'s' if ahead != 1 else ''} ahead"


def check_queued_quota(db: Session, settings: Settings, owner: str, adding: int, key: str | None = None) -> None:
    """Raises QuotaExceeded (a 429 naming ``queued_jobs``) when ``adding`` more queued jobs would take ``owner``
    past their limit; a retry of a request already made (its ``Idempotency-Key`` known, for a day) adds none."""
    if key is not None and db.scalar(select(IdempotencyKey.job_id).where(
            IdempotencyKey.owner == owner, IdempotencyKey.key == key,
            IdempotencyKey.created_at >= utcnow() - IDEMPOTENCY_TTL)) is not None:
        return
    limit = limits_for(settings, owner).queued_jobs
    queued = db.scalar(select(func.count()).select_from(Job).where(Job.owner == owner, Job.status == "queued"))
    if queued + adding > limit:
        raise QuotaExceeded("queued_jobs", limit, queued,
                            f"you have {queued} job(s) queued; {adding} more would pass it: wait for some to start, "
                            "or cancel some")
