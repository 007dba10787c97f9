"""Jobs in the database, for the routes: creating one (once per ``Idempotency-Key``), withdrawing one the
broker never took, and listing an owner's jobs a page at a time."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mol_engine.spec import JobSpec

from .db import IdempotencyKey, Job, new_id, utcnow

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


def create_job(sessions: sessionmaker, owner: str, spec: JobSpec, key: str | None = None) -> tuple[Job, bool]:
    """(the job, whether it is new): a new ``queued`` job, or the one ``key`` made before for the same request.

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
                      max_steps=spec.max_steps)
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


def page_of_jobs(db: Session, owner: str, limit: int, after: Job | None = None) -> tuple[list[Job], bool]:
    """(up to ``limit`` of the owner's jobs, newest first, older than ``after``; whether more follow).

    Ordered by (created_at, id), both descending, so a page boundary is exact even when jobs share a
    timestamp, and jobs created while a client pages only ever land before its first page.
    """
    query = select(Job).where(Job.owner == owner)
    if after is not None:
        query = query.where(or_(Job.created_at < after.created_at,
                                (Job.created_at == after.created_at) & (Job.id < after.id)))
    rows = list(db.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit

