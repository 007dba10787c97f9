"""Run one job in this process: take the job's lease, train with callbacks that write to the database, finish.

Started by the Celery task as ``python -m worker.runner JOB_ID`` in its own process group, so a cancelled
job's whole process tree can be ended after a grace period. The lease (owner + heartbeat, taken with
compare-and-set) makes sure one job never runs twice at once, whatever the broker redelivers.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import sessionmaker

from api.db import Dataset, Job, JobEvent, MetricPoint, init_db, make_engine, utcnow
from api.settings import Settings
from api.validation import available_models
from mol_engine.callbacks import Callback
from mol_engine.spec import JobSpec


def acquire_lease(sessions: sessionmaker, job_id: str, me: str, settings: Settings) -> bool:
    """Take the job if it is queued, or running with a stale heartbeat; False when someone else holds it."""
    stale = utcnow() - timedelta(seconds=settings.lease_timeout_s)
    with sessions.begin() as db:
        taken = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.cancel_requested.is_(False))
            .where(or_(Job.status == "queued",
                       (Job.status == "running") & or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)))
            .values(status="running", lease_owner=me, heartbeat_at=utcnow(), attempt=Job.attempt + 1,
                    started_at=utcnow())
        ).rowcount
    return taken == 1


class DatabaseRecorder(Callback):
    """Writes metric points and events to the database, heartbeats the lease, and reads the cancel flag."""

    def __init__(self, sessions: sessionmaker, job_id: str, me: str, heartbeat_s: float,
                 labels: dict[str, str] | None = None) -> None:
        self.sessions, self.job_id, self.me = sessions, job_id, me
        self.labels = labels or {}  # the engine names stored files; the owner sees their own names
        self._parent = os.getppid()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True)
        self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self.sessions.begin() as db:
                db.execute(update(Job).where(Job.id == self.job_id, Job.lease_owner == self.me)
                           .values(heartbeat_at=utcnow()))

    def close(self) -> None:
        self._stop.set()

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        with self.sessions.begin() as db:
            db.add(MetricPoint(job_id=self.job_id, step=step, values=metrics))
            job = db.get(Job, self.job_id)
            job.step = max(job.step, step)
            job.last_metrics = {**job.last_metrics, **metrics}

    def on_event(self, event: dict[str, Any]) -> None:
        data = {k: v for k, v in event.items() if k not in ("step", "kind", "message")}
        if isinstance(data.get("file"), str):
            data["file"] = relabel(data["file"], self.labels)
        with self.sessions.begin() as db:
            db.add(JobEvent(job_id=self.job_id, step=event["step"], kind=event["kind"],
                            message=relabel(event["message"], self.labels), data=data))

    def on_rewind(self, step: int) -> None:
        with self.sessions.begin() as db:
            db.execute(delete(MetricPoint).where(MetricPoint.job_id == self.job_id, MetricPoint.step > step))
            job = db.get(Job, self.job_id)
            job.step = max(step, 0)

    def should_stop(self) -> bool:
        if os.getppid() != self._parent:  # the worker that started us is gone: stop, a new one resumes
            return True
        with self.sessions() as db:
            return bool(db.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))


def resolve_spec(sessions: sessionmaker, job: Job, settings: Settings) -> JobSpec:
    """The job's spec with model and dataset ids replaced by local paths."""
    models = available_models(settings)
    with sessions() as db:
        paths = {d.id: d.path for d in db.scalars(select(Dataset).where(Dataset.owner == job.owner))}
    spec = JobSpec.model_validate(job.spec)

    def resolve(ref: str) -> str:
        if ref == spec.base_model:
            return str(models[ref])
        if ref not in paths:
            raise ValueError(f"dataset '{ref}' no longer exists")
        return paths[ref]

    return spec.resolve_paths(resolve)


def dataset_labels(sessions: sessionmaker, owner: str) -> dict[str, str]:
    """Each of the owner's datasets as the server stores it (path, file name) -> as the owner knows it."""
    labels = {}
    with sessions() as db:
        for dataset in db.scalars(select(Dataset).where(Dataset.owner == owner)):
            labels[dataset.path] = f"{dataset.filename} ({dataset.id})"
            labels[Path(dataset.path).name] = dataset.filename
    return labels


def relabel(text: str, labels: dict[str, str]) -> str:
    """``text`` with server paths and file names replaced by the owner's names (whole paths first)."""
    for stored in sorted(labels, key=len, reverse=True):
        text = text.replace(stored, labels[stored])
    return text


def finish(sessions: sessionmaker, job_id: str, status: str, error: str | None = None) -> None:
    with sessions.begin() as db:
        job = db.get(Job, job_id)
        job.status, job.error, job.finished_at, job.lease_owner = status, error, utcnow(), None
        if error:
            db.add(JobEvent(job_id=job_id, step=job.step, kind="failed", message=error, data={}))


def run(job_id: str, settings: Settings | None = None) -> str:
    """Run (or resume) one job to its end; returns its final status, or ``skipped`` if it is not ours to run."""
    from mol_engine.train import train

    settings = settings or Settings()
    sessions = init_db(make_engine(settings.db_url))
    me = f"{socket.gethostname()}:{os.getpid()}"
    if not acquire_lease(sessions, job_id, me, settings):
        return "skipped"
    with sessions() as db:
        job = db.get(Job, job_id)
    if job.attempt > settings.job_attempts:
        finish(sessions, job_id, "failed", f"gave up after {settings.job_attempts} attempts")
        return "failed"
    labels = dataset_labels(sessions, job.owner)
    recorder = DatabaseRecorder(sessions, job_id, me, settings.heartbeat_s, labels)
    try:
        spec = resolve_spec(sessions, job, settings)
        result = train(spec, settings.runs_dir / job_id, [recorder], resume=True)
    except Exception as err:  # any failure becomes the job's error message
        recorder.close()
        finish(sessions, job_id, "failed", relabel(f"{type(err).__name__}: {err}", labels))
        return "failed"
    recorder.close()
    if result.status == "cancelled" and os.getppid() != recorder._parent:
        return "orphaned"  # not a user's cancel: leave the job running for the next worker to resume
    finish(sessions, job_id, result.status)
    return result.status


if __name__ == "__main__":
    print(run(sys.argv[1]))
