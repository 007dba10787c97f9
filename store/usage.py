"""Usage: what each job uses (accelerator time, processed tokens, storage), metered so that figures survive
restarts and resumes without double counting, and summed by owner and UTC day for GET /v1/usage and the quotas.

* **Accelerator-seconds** = processes (the spec's ``nproc``; 1 for a CPU job too) x wall seconds the job's runner
  held its lease. The runner's lease heartbeat (worker/runner.py) writes, per (job, attempt, UTC day), the
  attempt's lease time within that day since the attempt began: an UPDATE that only ever raises the figure, so a
  repeated or retried write adds nothing, and a resumed job (a new attempt) adds rows of its own. A killed runner
  loses at most one heartbeat of metering. Steps redone after a crash are accelerator time spent: counted.
* **Processed tokens** = the tokens of the steps the job completed: the engine's cumulative ``train/tokens``
  (restored from the checkpoint on resume) is compared with the job's high-water mark (the sum of its rows), and
  only what lies above it is added, to the attempt's row of the day. A step redone after a resume counts once.
* **Storage** = the owner's datasets (their rows' ``bytes``) and each job's run directory, which its runner
  measures after each checkpoint and when it ends (``job_storage``; a deleted job's row goes with it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import Row, distinct, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from .db import Dataset, Job, JobStorage, UsageRecord, utcnow
from .leases import as_utc


@dataclass(frozen=True)
class Attempt:
    """One attempt of one job: the key its usage rows are written under."""

    job_id: str
    owner: str
    attempt: int
    processes: int


def attempt_of(db: Session, job_id: str) -> Attempt:
    """The job's current attempt (its runner's), read from its row."""
    job = db.get(Job, job_id)
    return Attempt(job.id, job.owner, job.attempt, int(job.spec.get("nproc") or 1))


def day_seconds(start: datetime, end: datetime) -> dict[date, float]:
    """The seconds of [start, end) within each UTC day it touches (none when ``end`` is not after ``start``)."""
    start, end = as_utc(start), as_utc(end)
    out: dict[date, float] = {}
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), time(), UTC)
        stop = min(end, midnight)
        out[start.date()] = (stop - start).total_seconds()
        start = stop
    return out


def _row(db: Session, key: Attempt, day: date) -> None:
    """Make the attempt's row of ``day`` if it is missing (a racing insert of the same row is no error)."""
    values = {"job_id": key.job_id, "attempt": key.attempt, "day": day, "owner": key.owner,
              "processes": key.processes, "seconds": 0.0, "tokens": 0}
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    else:  # pragma: no cover - the two databases MoL Studio runs on
        if db.get(UsageRecord, (key.job_id, key.attempt, day)) is None:
            db.execute(insert(UsageRecord).values(**values))
        return
    db.execute(upsert(UsageRecord).values(**values).on_conflict_do_nothing())


def _same(key: Attempt, day: date):
    return (UsageRecord.job_id == key.job_id, UsageRecord.attempt == key.attempt, UsageRecord.day == day)


def record_lease_time(sessions: sessionmaker, key: Attempt, started: datetime, now: datetime,
                      since: datetime | None = None) -> None:
    """Write the attempt's lease time from ``started`` to ``now`` into its rows of each UTC day (from the day of
    ``since``, the previous write, on: earlier days are complete). Each row's seconds only ever grow to the
    attempt's time within that day: writing the same moment twice, or an older one, changes nothing."""
    first = as_utc(since or started).date()
    with sessions.begin() as db:
        for day, seconds in day_seconds(started, now).items():
            if day < first:
                continue
            _row(db, key, day)
            db.execute(update(UsageRecord).where(*_same(key, day), UsageRecord.seconds < seconds)
                       .values(seconds=seconds))


def record_tokens(db: Session, key: Attempt, cumulative: int, now: datetime | None = None) -> int:
    """Count the job's processed tokens up to ``cumulative`` (the engine's ``train/tokens`` after a step), inside
    the caller's transaction: what lies above the job's high-water mark goes to the attempt's row of today. Returns
    the tokens added (0 for a step redone after a resume). The job's row is locked first on PostgreSQL, so two
    writers of one job cannot both add the same tokens."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(select(Job.id).where(Job.id == key.job_id).with_for_update())
    high = db.scalar(select(func.coalesce(func.sum(UsageRecord.tokens), 0))
                     .where(UsageRecord.job_id == key.job_id)) or 0
    added = int(cumulative) - int(high)
    if added <= 0:
        return 0
    day = as_utc(now or utcnow()).date()
    _row(db, key, day)
    db.execute(update(UsageRecord).where(*_same(key, day)).values(tokens=UsageRecord.tokens + added))
    return added


def tree_bytes(path: str | Path) -> int:
    """Total size in bytes of the regular files under ``path`` (0 when it does not exist); links are not followed.

    Files and directories that vanish during the walk (a checkpoint being pruned) are skipped.
    """
    total, pending = 0, [os.fspath(path)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def record_storage(sessions: sessionmaker, job_id: str, owner: str, size: int) -> None:
    """The job's run directory holds ``size`` bytes now (nothing when the job is gone)."""
    with sessions.begin() as db:
        if db.get(Job, job_id) is None:
            return
        row = db.get(JobStorage, job_id)
        if row is None:
            db.add(JobStorage(job_id=job_id, owner=owner, bytes=size, measured_at=utcnow()))
        else:
            row.bytes, row.measured_at = size, utcnow()


# --- reading ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobTotals:
    tokens: int
    accelerator_seconds: float
    storage_bytes: int


def job_totals(db: Session, job_id: str) -> JobTotals:
    """The job's usage over all its attempts and days, and its run directory as last measured."""
    tokens, seconds = db.execute(select(func.coalesce(func.sum(UsageRecord.tokens), 0),
                                        func.coalesce(func.sum(UsageRecord.processes * UsageRecord.seconds), 0.0))
                                 .where(UsageRecord.job_id == job_id)).one()
    stored = db.scalar(select(JobStorage.bytes).where(JobStorage.job_id == job_id)) or 0
    return JobTotals(int(tokens), float(seconds), int(stored))


def days_of(db: Session, owner: str, first: date, last: date) -> list[Row]:
    """(day, tokens, accelerator_seconds, jobs) of each UTC day from ``first`` to ``last`` on which the owner's
    jobs used anything, in order; ``jobs``: how many of them ran that day."""
    return list(db.execute(
        select(UsageRecord.day, func.sum(UsageRecord.tokens), func.sum(UsageRecord.processes * UsageRecord.seconds),
               func.count(distinct(UsageRecord.job_id)))
        .where(UsageRecord.owner == owner, UsageRecord.day >= first, UsageRecord.day <= last)
        .group_by(UsageRecord.day).order_by(UsageRecord.day)))


def accelerator_seconds_on(db: Session, owner: str, day: date) -> float:
    """The owner's accelerator-seconds on one UTC day."""
    return float(db.scalar(select(func.coalesce(func.sum(UsageRecord.processes * UsageRecord.seconds), 0.0))
                           .where(UsageRecord.owner == owner, UsageRecord.day == day)) or 0.0)


def storage_bytes(db: Session, owner: str) -> tuple[int, int]:
    """(bytes of the owner's datasets, bytes of their jobs' run directories as last measured)."""
    datasets = db.scalar(select(func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.owner == owner)) or 0
    runs = db.scalar(select(func.coalesce(func.sum(JobStorage.bytes), 0)).where(JobStorage.owner == owner)) or 0
    return int(datasets), int(runs)


class LeaseMeter:
    """Meters one attempt's lease time: :meth:`record` after each heartbeat the runner still held, and once at
    its end. ``clock`` gives the time (tests move it)."""

    def __init__(self, sessions: sessionmaker, key: Attempt, started: datetime,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.sessions, self.key, self.started, self.clock = sessions, key, as_utc(started), clock
        self._last = self.started

    def record(self) -> None:
        now = self.clock()
        record_lease_time(self.sessions, self.key, self.started, now, since=self._last)
        self._last = max(self._last, as_utc(now))
