"""The job state machine, the one place a job's status changes, for the API and the workers alike.

    queued --lease--> running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled                running --requeue / dead lease--> queued (resumes)
    running --cancel--> running with cancel_requested (its runner stops at its next step), or cancelled at
                        once when its lease is dead, or when its runner did not stop within the grace
    queued --pause--> paused                    running --pause--> running with pause_requested (its runner
                        saves a checkpoint at its next step and ends the run paused), or paused at once when its
                        lease is dead (it resumes from its last complete checkpoint)
    paused --resume--> queued (resumes from its checkpoint)          paused --cancel--> cancelled

``paused`` is neither active (no worker writes to a paused job, its lease is free) nor final (it may resume):
the owner resumes it, cancels it, or deletes it as an ended one.

Each change is one ``UPDATE ... WHERE`` on the state it was decided from (compare-and-set), with its event in
the same transaction (and its webhook outbox rows, store/webhook_outbox.py), so it cannot overwrite a change
made meanwhile by another process: a cancel racing a lease ends either as cancelled-before-start or as a
running job with ``cancel_requested`` set, which its runner reads after every step; a runner taken for dead
cannot overwrite the state of the runner that took its job over (every runner change names its ``holder``).

Here too: creating a job (once per ``Idempotency-Key``), withdrawing one the broker never took, listing an
owner's jobs a page at a time, deleting an ended one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, Row, and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mol_engine.callbacks import EngineEventKind
from mol_engine.spec import JobSpec, Method

from .db import IdempotencyKey, Job, JobEvent, MetricPoint, SideTask, new_id, utcnow
from .leases import as_utc, lease_is_dead
from .lineage import Lineage, children_in_flight
from .webhook_outbox import record_job_event_for_webhooks

JobStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
ACTIVE = ("queued", "running")  # someone may still write to the job
FINAL = ("succeeded", "failed", "cancelled")  # nobody will, ever
PAUSED = "paused"  # nobody writes to it until its owner resumes it: neither active nor final
UNFINISHED = (*ACTIVE, PAUSED)  # may still train: what its datasets must outlive
DELETABLE = (*FINAL, PAUSED)  # no worker writes to it: its rows and run directory may go
RunEnd = Literal["succeeded", "failed", "cancelled"]  # how a runner's run ends (the engine's result, or a failure)
# The kinds of a job's events: the engine's, and the service's own: a failure, a run interrupted (its worker gone,
# its lease taken over) or put back in the queue (a rank died, a dead lease), the owner's resume of a paused job
# (the engine's own ``resumed`` follows when a worker continues it), and the side tasks' results
ServiceEventKind = Literal["failed", "interrupted", "requeued", "lease_lost", "resumed", "interpolation",
                           "task-evaluation"]
EventKind = Literal[EngineEventKind, ServiceEventKind]
EVENT_KINDS: tuple[str, ...] = tuple(dict.fromkeys(get_args(EngineEventKind) + get_args(ServiceEventKind)))

IDEMPOTENCY_TTL = timedelta(hours=24)  # as Stripe: a key may be reused for another request after a day


class KeyReused(Exception):
    """The ``Idempotency-Key`` was used before with a different request."""


def request_hash(spec: JobSpec) -> str:
    """sha256 of the validated spec as canonical JSON: the same request spelt with or without defaults is equal."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _keyed_job(db: Session, owner: str, key: str, digest: str) -> Job | None:
    """The job made earlier under ``key`` (None if there is none, or it expired); KeyReused for another request."""
    db.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - IDEMPOTENCY_TTL))
    found = db.get(IdempotencyKey, (owner, key))
    if found is None:
        return None
    if found.request_sha256 != digest:
        raise KeyReused(key)
    return db.get(Job, found.job_id)


def create_job(sessions: sessionmaker, owner: str, spec: JobSpec, key: str | None = None,
               sweep_id: str | None = None, lineage: Lineage | None = None) -> tuple[Job, bool]:
    """(the job, whether it is new): a new ``queued`` job (in sweep ``sweep_id``, if given; continuing from a
    checkpoint as ``lineage`` says, if given), or the one ``key`` made before for the same request.

    Raises KeyReused when ``key`` was used for a different request. Two requests racing with one key make one
    job: the loser's insert of the key fails and it returns the winner's job.
    """
    digest = request_hash(spec)
    try:
        with sessions.begin() as db:
            earlier = _keyed_job(db, owner, key, digest) if key else None
            if earlier is not None:
                return earlier, False
            job = Job(id=new_id("job"), owner=owner, name=spec.name, spec=spec.model_dump(mode="json"),
                      max_steps=spec.max_steps, sweep_id=sweep_id)
            if lineage is not None:
                job.parent_job_id, job.parent_checkpoint = lineage.parent_job_id, lineage.parent_checkpoint
                job.original_base_model = lineage.original_base_model
            db.add(job)
            if key:
                db.flush()  # the job row first: the key refers to it
                db.add(IdempotencyKey(owner=owner, key=key, request_sha256=digest, job_id=job.id))
        return job, True
    except IntegrityError:
        if not key:
            raise
        with sessions.begin() as db:
            earlier = _keyed_job(db, owner, key, digest)
        if earlier is None:
            raise
        return earlier, False


def withdraw_job(sessions: sessionmaker, job_id: str) -> bool:
    """Delete a job the broker could not be given, with its key; False if a worker has already started it."""
    with sessions.begin() as db:
        db.execute(delete(IdempotencyKey).where(IdempotencyKey.job_id == job_id))
        gone = db.execute(delete(Job).where(Job.id == job_id, Job.status == "queued", Job.attempt == 0)).rowcount
    return gone == 1


@dataclass(frozen=True)
class JobFilter:
    """Which of an owner's jobs a list shows: all of them by default."""

    status: JobStatus | None = None
    method: Method | None = None
    name_contains: str | None = None  # case-insensitive

    def where(self) -> list[ColumnElement[bool]]:
        """The filter as SQL conditions, so the database applies it (and its LIMIT counts only matching rows)."""
        conditions = []
        if self.status:
            conditions.append(Job.status == self.status)
        if self.method:
            conditions.append(Job.spec["method"].as_string() == self.method)
        if self.name_contains:
            literal = self.name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(Job.name.ilike(f"%{literal}%", escape="\\"))
        return conditions


def page_of_jobs(db: Session, owner: str, limit: int, after: Job | None = None,
                 only: JobFilter = JobFilter()) -> tuple[list[Job], bool]:
    """(up to ``limit`` of the owner's jobs that pass ``only``, newest first, older than ``after``; whether more
    follow).

    Ordered by (created_at, id), both descending, so a page boundary is exact even when jobs share a
    timestamp, and jobs created while a client pages only ever land before its first page.
    """
    query = select(Job).where(Job.owner == owner, *only.where())
    if after is not None:
        query = query.where(or_(Job.created_at < after.created_at,
                                (Job.created_at == after.created_at) & (Job.id < after.id)))
    rows = list(db.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


class JobEnded(Exception):
    """The job has already ended; its status is the message."""


MAX_TRIES = 5  # a compare-and-set retried after a concurrent change; more than 2 changes in a row do not happen

# What a state change is decided from: read in one short session, then checked again by the UPDATE's WHERE
_LEASE_VIEW = (Job.id, Job.status, Job.lease_owner, Job.heartbeat_at, Job.cancel_requested, Job.step,
               Job.pause_requested)


def lease_view(sessions: sessionmaker, job_id: str) -> Row | None:
    """(id, status, lease_owner, heartbeat_at, cancel_requested, step, pause_requested) of the job, or None."""
    with sessions() as db:
        return db.execute(select(*_LEASE_VIEW).where(Job.id == job_id)).first()


def _same_lease(job: Row) -> ColumnElement[bool]:
    """WHERE the job still runs under the lease ``job`` saw, its heartbeat not renewed since."""
    owner = Job.lease_owner.is_(None) if job.lease_owner is None else Job.lease_owner == job.lease_owner
    beat = Job.heartbeat_at.is_(None) if job.heartbeat_at is None else Job.heartbeat_at <= job.heartbeat_at
    return and_(Job.id == job.id, Job.status == "running", owner, beat)


def _still_queued(job: Row) -> ColumnElement[bool]:
    return and_(Job.id == job.id, Job.status == "queued")


def _change(sessions: sessionmaker, where: ColumnElement[bool], values: dict[str, Any], job: Row,
            event: tuple[str, str] | None = None, webhook: str | None = None) -> bool:
    """Whether the one UPDATE ``where`` -> ``values`` took the job; if so, with the event (kind, message) and the
    webhook of kind ``webhook`` (every cancel, pause and resume the API or its sweeper makes passes here; a
    change to ``cancelled`` or ``paused`` sends its own by default)."""
    webhook = webhook or (values.get("status") if values.get("status") in ("cancelled", PAUSED) else None)
    with sessions.begin() as db:
        if db.execute(update(Job).where(where).values(**values)).rowcount != 1:
            return False
        if event:
            db.add(JobEvent(job_id=job.id, step=job.step, kind=event[0], message=event[1], data={}))
        if webhook:
            record_job_event_for_webhooks(db, db.get(Job, job.id), webhook)
    return True


def _ended() -> dict[str, Any]:
    """The values of a job that ends cancelled."""
    return {"status": "cancelled", "cancel_requested": True, "finished_at": utcnow(), "lease_owner": None}


def _paused() -> dict[str, Any]:
    """The values of a paused job: no lease, no pause pending (it was honoured)."""
    return {"status": PAUSED, "pause_requested": False, "lease_owner": None}


def _requeued() -> dict[str, Any]:
    """The values of a job back in the queue (``queued_at``: when it was last handed to the broker)."""
    return {"status": "queued", "lease_owner": None, "queued_at": utcnow()}


def lease_lost(job: Row) -> str:
    """Why a job's lease is dead, in words: ``lease lost: worker X stopped heartbeating at T``."""
    beat = as_utc(job.heartbeat_at)
    when = beat.isoformat(timespec="seconds").replace("+00:00", "Z") if beat else "its start"
    return f"lease lost: worker {job.lease_owner or '(none)'} stopped heartbeating at {when}"


def cancel_job(sessions: sessionmaker, job_id: str, lease_timeout_s: float) -> Job:
    """The job after a cancel: ``cancelled`` at once when nobody runs it (queued, paused, or its lease is dead),
    else still ``running`` with ``cancel_requested`` set for its runner. Raises JobEnded when it had already
    ended."""
    for _ in range(MAX_TRIES):
        job = lease_view(sessions, job_id)
        if job is None:
            raise LookupError(job_id)
        if job.status == "queued":
            done = _change(sessions, _still_queued(job), _ended(), job, ("cancelled", "cancelled before it started"))
        elif job.status == "running" and lease_is_dead(job.lease_owner, job.heartbeat_at, lease_timeout_s):
            done = _change(sessions, _same_lease(job), _ended(), job,
                           ("cancelled", f"cancelled; no worker was running it ({lease_lost(job)})"))
        elif job.status == "running":
            done = _change(sessions, and_(Job.id == job_id, Job.status == "running"), {"cancel_requested": True}, job)
        elif job.status == PAUSED:
            done = _change(sessions, and_(Job.id == job_id, Job.status == PAUSED), _ended(), job,
                           ("cancelled", "cancelled while paused; checkpoints kept"))
        else:
            raise JobEnded(job.status)
        if done:
            with sessions() as db:
                return db.get(Job, job_id)
    raise RuntimeError(f"job {job_id} changed state {MAX_TRIES} times while being cancelled")


def unended_view(sessions: sessionmaker, job_id: str) -> Row:
    """:func:`lease_view` of a job that has not ended; LookupError when it is gone, JobEnded when it ended."""
    job = lease_view(sessions, job_id)
    if job is None:
        raise LookupError(job_id)
    if job.status in FINAL:
        raise JobEnded(job.status)
    return job


class PauseRefused(Exception):
    """The job cannot be paused now (its cancel is pending); the message says why."""


def pause_job(sessions: sessionmaker, job_id: str, lease_timeout_s: float) -> Job:
    """The job after a pause: ``paused`` at once when nobody runs it (queued, or its lease is dead: it resumes from
    its last complete checkpoint), else still ``running`` with ``pause_requested`` set for its runner, which saves
    a checkpoint at its next step and ends the run paused. A paused job comes back unchanged. Raises JobEnded
    when it had ended, PauseRefused when its cancel is pending."""
    for _ in range(MAX_TRIES):
        job = unended_view(sessions, job_id)
        if job.cancel_requested:
            raise PauseRefused("it is being cancelled")
        if job.status == PAUSED:
            done = True
        elif job.status == "queued":
            done = _change(sessions, and_(_still_queued(job), Job.cancel_requested.is_(False)), _paused(), job,
                           ("paused", "paused while it waited for a worker; resume it to queue it again"))
        elif lease_is_dead(job.lease_owner, job.heartbeat_at, lease_timeout_s):
            done = _change(sessions, and_(_same_lease(job), Job.cancel_requested.is_(False)), _paused(), job,
                           ("paused", f"paused; no worker was running it ({lease_lost(job)}); it resumes from its "
                                      "last checkpoint"))
        else:
            done = _change(sessions, and_(Job.id == job_id, Job.status == "running", Job.cancel_requested.is_(False)),
                           {"pause_requested": True}, job)
        if done:
            with sessions() as db:
                return db.get(Job, job_id)
    raise RuntimeError(f"job {job_id} changed state {MAX_TRIES} times while being paused")


def resume_job(sessions: sessionmaker, job_id: str) -> tuple[Job, bool]:
    """(the job after a resume, whether it went back to the queue): a paused job is ``queued`` again with a
    ``resumed`` event and webhook (the caller hands it to the broker: it continues from its checkpoint); a pause
    not yet honoured by a running job's runner is withdrawn; a queued or running job comes back unchanged.
    Raises JobEnded when it had ended."""
    for _ in range(MAX_TRIES):
        job = unended_view(sessions, job_id)
        requeued = job.status == PAUSED
        if requeued:
            done = _change(sessions, and_(Job.id == job_id, Job.status == PAUSED),
                           _requeued() | {"pause_requested": False}, job,
                           ("resumed", "resumed by its owner; it waits for a worker to continue from its checkpoint"),
                           webhook="resumed")
        elif job.pause_requested:
            done = _change(sessions, and_(Job.id == job_id, Job.status == job.status, Job.pause_requested),
                           {"pause_requested": False}, job)
        else:
            done = True
        if done:
            with sessions() as db:
                return db.get(Job, job_id), requeued
    raise RuntimeError(f"job {job_id} changed state {MAX_TRIES} times while being resumed")


class JobActive(Exception):
    """The job is queued or running; its status is the message."""


class ParentInUse(Exception):
    """An unfinished job continues from a checkpoint of the job: (its id, its status)."""

    def __init__(self, child_id: str, status: str) -> None:
        super().__init__(child_id, status)
        self.child_id, self.status = child_id, status


def delete_job(sessions: sessionmaker, job_id: str) -> None:
    """Delete an ended or paused job's row with its metric points, events, side tasks and idempotency keys, in one
    transaction.

    Raises JobActive when it is queued or running (a worker may be writing to it: cancel it first), ParentInUse
    when an unfinished job continues from one of its checkpoints, LookupError when it is gone. The job's delete
    is a compare-and-set on its having ended or paused (no worker writes to it), so a job re-queued or resumed
    meanwhile stays whole. Its run directory is the caller's to remove, after this commits.
    """
    with sessions.begin() as db:
        status = db.scalar(select(Job.status).where(Job.id == job_id))
        if status is None:
            raise LookupError(job_id)
        if status in DELETABLE and (children := children_in_flight(db, job_id)):
            raise ParentInUse(*children[0])
        for table in (MetricPoint, JobEvent, SideTask, IdempotencyKey):
            db.execute(delete(table).where(table.job_id == job_id))
        if db.execute(delete(Job).where(Job.id == job_id, Job.status.in_(DELETABLE))).rowcount != 1:
            raise JobActive(status)  # rolls the children's deletes back


def release_dead_leases(sessions: sessionmaker, lease_timeout_s: float) -> dict[str, str]:
    """The jobs nobody runs any more that it moved, id -> new status: a running job whose lease is dead goes back
    to ``queued`` with a ``lease_lost`` event saying why (or to ``cancelled`` if its cancel was requested, or to
    ``paused`` if its pause was: its worker died while pausing, and it resumes from its last complete checkpoint);
    a queued job whose cancel was requested (a worker re-queued it) is ``cancelled``."""
    with sessions() as db:
        jobs = db.execute(select(*_LEASE_VIEW).where(or_(Job.status == "running",
                                                         and_(Job.status == "queued", Job.cancel_requested)))).all()
    moved = {}
    for job in jobs:
        if job.status == "queued":
            status = "cancelled"
            done = _change(sessions, _still_queued(job), _ended(), job, ("cancelled", "cancelled before it resumed"))
        elif not lease_is_dead(job.lease_owner, job.heartbeat_at, lease_timeout_s):
            continue
        elif job.cancel_requested:
            status = "cancelled"
            done = _change(sessions, _same_lease(job), _ended(), job,
                           ("cancelled", f"cancelled; its worker stopped before the job did ({lease_lost(job)})"))
        elif job.pause_requested:
            status = PAUSED
            done = _change(sessions, and_(_same_lease(job), Job.cancel_requested.is_(False)), _paused(), job,
                           ("paused", f"paused; its worker stopped while pausing ({lease_lost(job)}); it resumes "
                                      "from its last complete checkpoint"))
        else:
            status = "queued"
            done = _change(sessions, _same_lease(job), _requeued(), job,
                           ("lease_lost", f"{lease_lost(job)}; the job waits for a worker to resume it"))
        if done:
            moved[job.id] = status
    return moved


# --- the runner's changes: each names the runner (``holder``, host:pid) that holds the lease --------------------

def acquire_lease(sessions: sessionmaker, job_id: str, holder: str, lease_timeout_s: float) -> bool:
    """Whether ``holder`` took the job: it was queued, or running with a heartbeat older than ``lease_timeout_s``
    (its runner taken for dead), and no cancel or pause is pending (a dead runner's pending pause makes the job
    ``paused``: release_dead_leases). One compare-and-set; the attempt counts up."""
    stale = utcnow() - timedelta(seconds=lease_timeout_s)
    with sessions.begin() as db:
        taken = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.cancel_requested.is_(False), Job.pause_requested.is_(False))
            .where(or_(Job.status == "queued",
                       (Job.status == "running") & or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)))
            .values(status="running", lease_owner=holder, heartbeat_at=utcnow(), attempt=Job.attempt + 1,
                    started_at=utcnow())
        ).rowcount
    return taken == 1


def renew_lease(sessions: sessionmaker, job_id: str, holder: str) -> bool:
    """Whether ``holder`` still held the job's lease, whose heartbeat is now renewed."""
    with sessions.begin() as db:
        return db.execute(update(Job).where(Job.id == job_id, Job.lease_owner == holder)
                          .values(heartbeat_at=utcnow())).rowcount == 1


def finish(sessions: sessionmaker, job_id: str, status: RunEnd, holder: str, error: str | None = None,
           stop_reason: str | None = None) -> bool:
    """Whether the job ``holder`` holds ended as ``status`` (with a ``failed`` event carrying ``error``, and its
    webhook); False when another runner took it over meanwhile (its state is theirs to write)."""
    values = {"status": status, "error": error, "stop_reason": stop_reason, "finished_at": utcnow(),
              "lease_owner": None}
    with sessions.begin() as db:
        if db.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.lease_owner == holder)
                      .values(**values)).rowcount != 1:
            return False
        job = db.get(Job, job_id)
        if error:
            db.add(JobEvent(job_id=job_id, step=job.step, kind="failed", message=error, data={}))
        record_job_event_for_webhooks(db, job, status)  # the outbox: sent by the API's dispatcher
    return True


def requeue(sessions: sessionmaker, job_id: str, holder: str, reason: str) -> bool:
    """Whether the job ``holder`` holds went back to the queue, to resume from its last checkpoint (a rank died);
    a ``requeued`` event says ``reason``."""
    job = lease_view(sessions, job_id)
    if job is None or job.lease_owner != holder:
        return False
    return _change(sessions, and_(_same_holder(job), Job.status == "running"), _requeued(), job,
                   ("requeued", f"{reason}; resuming from the last checkpoint"))


def end_paused_run(sessions: sessionmaker, job_id: str, holder: str) -> str | None:
    """How the job whose run ``holder`` ended paused (its checkpoint saved at its last step; the engine's
    ``paused`` event recorded) stands now: ``paused`` (with its webhook); ``cancelled`` when its owner cancelled
    it meanwhile; ``requeued`` when its owner resumed it meanwhile (the pause withdrawn while the run saved: the
    caller hands it to the broker, and it continues from that checkpoint); None when another runner took the job
    over (its state is theirs to write). A run that paused used none of the job's ``job_attempts`` (those count
    runs that crashed): its attempt is given back."""
    for _ in range(MAX_TRIES):
        job = lease_view(sessions, job_id)
        if job is None or job.lease_owner != holder or job.status != "running":
            return None
        mine = and_(_same_holder(job), Job.status == "running", Job.cancel_requested == job.cancel_requested,
                    Job.pause_requested == job.pause_requested)
        if job.cancel_requested:
            outcome = "cancelled"
            done = _change(sessions, mine, _ended(), job, ("cancelled", "cancelled while pausing; checkpoints kept"))
        elif job.pause_requested:
            outcome = PAUSED
            done = _change(sessions, mine, _paused() | _attempt_given_back(), job)
        else:
            outcome = "requeued"
            done = _change(sessions, mine, _requeued() | _attempt_given_back(), job,
                           ("requeued", "the pause was withdrawn while the run saved its checkpoint; resuming from it"))
        if done:
            return outcome
    raise RuntimeError(f"job {job_id} changed state {MAX_TRIES} times while its run paused")


def _attempt_given_back() -> dict[str, Any]:
    return {"attempt": Job.attempt - 1}


def end_cancelled_run(sessions: sessionmaker, job_id: str, holder: str, grace_s: float) -> bool:
    """Whether the cancelled job whose runner ``holder`` did not stop within ``grace_s`` (and was ended by its
    worker) is now ``cancelled``, with its event and webhook."""
    job = lease_view(sessions, job_id)
    if job is None or job.lease_owner != holder:
        return False
    return _change(sessions, and_(_same_holder(job), Job.status == "running", Job.cancel_requested), _ended(), job,
                   ("cancelled", f"cancelled: the runner did not stop within {grace_s:g} s and was ended"))


def mark_sent(sessions: sessionmaker, job_ids: list[str]) -> None:
    """Record that the queued ``job_ids`` were handed to the broker now (the reconciler's grace counts from it)."""
    with sessions.begin() as db:
        db.execute(update(Job).where(Job.id.in_(job_ids), Job.status == "queued").values(queued_at=utcnow()))


def _same_holder(job: Row) -> ColumnElement[bool]:
    return and_(Job.id == job.id, Job.lease_owner == job.lease_owner)


def send_job(enqueue: Callable[..., None], job_id: str, spec: dict[str, Any]) -> None:
    """Hands ``job_id`` to the workers on the queue of its process count (``enqueue(job_id)`` for one process)."""
    nproc = spec.get("nproc", 1)
    enqueue(job_id, **({"nproc": nproc} if nproc > 1 else {}))


def job_spec(sessions: sessionmaker, job_id: str) -> dict[str, Any]:
    """The stored spec of the job ({} if it is gone)."""
    with sessions() as db:
        return db.scalar(select(Job.spec).where(Job.id == job_id)) or {}
