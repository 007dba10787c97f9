"""Side tasks in the database, for the routes: the work a worker does for an owner beside training (an
interpolation, a task evaluation of a job), recorded before its message goes to the broker.

An owner has at most ``MOL_SIDE_TASKS_PER_OWNER`` of them queued or running, and the same request (same job, kind
and parameters) while one is pending or done finds that one instead of queueing another. The worker task marks
it ``running``, then ``done`` or ``failed`` (worker/tasks.py); a request the broker refused is withdrawn.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text
from sqlalchemy.orm import Session, sessionmaker

from store.db import SideTask, utcnow

PENDING = ("queued", "running")


class TooManyPending(Exception):
    """The owner already has ``limit`` side tasks queued or running."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def request_hash(params: dict[str, Any]) -> str:
    """sha256 of ``params`` as canonical JSON: what makes two requests of one kind on one job the same."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def request_side_task(sessions: sessionmaker, owner: str, job_id: str, kind: str, params: dict[str, Any],
                      limit: int, expiry: timedelta) -> tuple[SideTask, bool]:
    """(the side task, whether it is new): the owner's same request still pending or done, else a new ``queued``
    one. Raises TooManyPending when ``limit`` of the owner's are pending. One pending for longer than ``expiry``
    is taken for lost: neither found nor counted.

    The new row is written first and the others read after it, under a per-owner lock on PostgreSQL (SQLite
    writes one transaction at a time), so concurrent requests of one owner take turns: never one over the cap."""
    digest = request_hash(params)
    since = utcnow() - expiry
    with sessions() as db:
        _take_turns(db, owner)
        task = SideTask(owner=owner, job_id=job_id, kind=kind, request_sha256=digest)
        db.add(task)
        db.flush()
        live = or_(SideTask.status == "done", and_(SideTask.status.in_(PENDING), SideTask.created_at >= since))
        earlier = db.scalar(select(SideTask).where(SideTask.id != task.id, SideTask.owner == owner,
                                                   SideTask.job_id == job_id, SideTask.kind == kind,
                                                   SideTask.request_sha256 == digest, live)
                            .order_by(SideTask.created_at.desc()).limit(1))
        pending = db.scalar(select(func.count()).select_from(SideTask).where(
            SideTask.owner == owner, SideTask.status.in_(PENDING), SideTask.created_at >= since))
        if earlier is not None:
            db.expunge(earlier)  # kept as read: the rollback would expire it
        if earlier is not None or pending > limit:
            db.rollback()
            if earlier is None:
                raise TooManyPending(limit)
            return earlier, False
        db.commit()
    return task, True


def _take_turns(db: Session, owner: str) -> None:
    """On PostgreSQL, waits for the owner's other side-task requests in flight to commit (a lock until this
    transaction ends); SQLite's one writer at a time does the same from the first write."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"mol-side-tasks:{owner}"})


def withdraw_side_task(sessions: sessionmaker, task_id: str) -> bool:
    """Delete a side task the broker could not be given; False if a worker has already started it."""
    with sessions.begin() as db:
        return db.execute(delete(SideTask).where(SideTask.id == task_id, SideTask.status == "queued")).rowcount == 1


def pending_side_tasks(db: Session, job_id: str, expiry: timedelta) -> list[SideTask]:
    """The job's side tasks still queued or running, oldest first; one pending for longer than ``expiry`` is taken
    for lost and left out. At most the owner's cap (``MOL_SIDE_TASKS_PER_OWNER``) of them, as requests keep it."""
    return list(db.scalars(select(SideTask).where(SideTask.job_id == job_id, SideTask.status.in_(PENDING),
                                                  SideTask.created_at >= utcnow() - expiry)
                           .order_by(SideTask.created_at)))
