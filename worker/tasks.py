"""The Celery task that runs one job, and the reconciler that re-queues jobs nobody is running.

The task starts the engine in a child process with its own process group (``python -m worker.runner``),
watches it, and, when the user cancels, gives it ``cancel_grace_s`` to stop cooperatively before ending the
whole group. Killing the worker kills the child too (it notices its parent is gone); the job stays
``running`` with a dead lease, and the reconciler of the next worker start re-queues it to resume.

Each job has at most one message waiting in the broker: the reconciler sends one only for a job that needs it
(re-queued from a dead lease, queued again after it ran, or queued for longer than ``lease_timeout_s``) and
whose message the broker no longer holds (a Redis wipe, a send that failed, a delivery to a worker that died).
A stale delivery costs a database read: the task starts no process for a job that has ended or runs under a
live lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TextIO

from celery import shared_task, signals
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from mol_engine.run_dir import checkpoint_names, step_of
from store.db import Dataset, Job, JobEvent, SideTask, WorkerSeen, sessions_for, utcnow
from store.dispatch import EVALUATE_TASK, INTERPOLATE_TASK, TASK_NAME, job_sender
from store.jobs import ACTIVE, end_cancelled_run, mark_sent, release_dead_leases
from store.leases import as_utc, lease_is_dead
from store.settings import Settings

from .broker_queues import waiting_job_ids
from .devices import describe_device, device_memory_mib

log = logging.getLogger(__name__)
# What the heartbeat records (GET /v1/workers). The worker runs its tasks in its own process (``--pool=solo``,
# api/service.py), so the heartbeat thread and the task see the same values.
_current_job: str | None = None
_device: str | None = None
_memory_mib: int | None = None  # worker.devices.device_memory_mib, read once with the device


def _settings() -> Settings:
    return Settings()


@shared_task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self, job_id: str) -> str:
    """Run ``job_id`` in a child process until it ends; returns the runner's final word."""
    settings = _settings()
    sessions = sessions_for(settings.db_url)
    with sessions() as db:
        job = db.get(Job, job_id)
        if job is None:
            log.info("job %s skipped: the job was deleted", job_id)
            return "skipped"
        if _is_stale_delivery(job, settings):
            return "skipped"
        nproc = _nproc(job)
    global _current_job
    _current_job = job_id
    _beat(sessions, settings)  # GET /v1/workers shows the job now, not at the next heartbeat
    try:
        with _job_log(settings, job_id) as job_log:
            outcome = _watch_runner(sessions, settings, job_id, job_log)
    finally:
        _current_job = None
        _beat(sessions, settings)
    if outcome == "requeued":  # a rank died: the runner put the job back in the queue to resume
        _send(job_sender(settings), job_id, nproc)
    return outcome


@contextlib.contextmanager
def _job_log(settings: Settings, job_id: str) -> Iterator[TextIO]:
    """The job's log (GET /v1/jobs/{id}/log), opened to append this attempt's lines: the runner's stderr (progress,
    events, warnings, a traceback) and this worker's own lines about it, each of these stamped."""
    path = settings.job_log_file(job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", buffering=1) as handle:
        _log_line(handle, f"worker {_worker_name()} ({_device or 'device unknown'}) starts the job's runner")
        yield handle


def _log_line(handle: TextIO, text: str) -> None:
    handle.write(f"[{utcnow().isoformat(timespec='seconds')}] {text}\n")
    handle.flush()


def _watch_runner(sessions: sessionmaker, settings: Settings, job_id: str, job_log: TextIO) -> str:
    """Run ``python -m worker.runner JOB_ID`` (its stderr into ``job_log``) until it ends, ending its process group
    ``cancel_grace_s`` after the user cancelled; returns the runner's last word (``cancelled`` when it was ended)."""
    child = subprocess.Popen([sys.executable, "-m", "worker.runner", job_id], start_new_session=True,
                             stdout=subprocess.PIPE, stderr=job_log, text=True, env=os.environ.copy())
    cancel_seen: float | None = None
    while child.poll() is None:
        time.sleep(0.5)
        with sessions() as db:
            cancelled = db.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        if cancelled and cancel_seen is None:
            cancel_seen = time.monotonic()
        if cancel_seen is not None and time.monotonic() - cancel_seen > settings.cancel_grace_s:
            _log_line(job_log, f"cancelled: the runner did not stop within {settings.cancel_grace_s:g} s; ended")
            _end_group(child)
            end_cancelled_run(sessions, job_id, f"{socket.gethostname()}:{child.pid}", settings.cancel_grace_s)
            return "cancelled"
    out = (child.stdout.read() if child.stdout else "").strip().splitlines()
    outcome = out[-1] if out else f"exit {child.returncode}"
    _log_line(job_log, f"the runner ended: {outcome} (exit code {child.returncode})")
    return outcome


@shared_task(name=INTERPOLATE_TASK, acks_late=True)
def interpolate(job_id: str, checkpoint: str, alphas: list[float], side_task: str | None = None) -> str:
    """Evaluate the models between the base and ``checkpoint`` of ``job_id`` at ``alphas`` (WiSE-FT)."""
    return record_interpolation(_settings(), job_id, checkpoint, alphas, side_task)


def record_interpolation(settings: Settings, job_id: str, checkpoint: str, alphas: list[float],
                         side_task: str | None = None) -> str:
    """Run the engine's interpolation of ``checkpoint`` (``step-N``) in this process and store its rows, or the
    error that stopped it, as an ``interpolation`` event of the job (and the outcome on the side task, if given);
    returns ``done``, ``failed``, or ``skipped`` for a job deleted since the request."""
    from mol_engine.interpolate import checkpoint_spec, evaluate_interpolation

    sessions = sessions_for(settings.db_url)
    if not _side_task_starts(sessions, job_id, side_task, "interpolation"):
        return "skipped"
    path = settings.run_dir(job_id).checkpoint(checkpoint)
    data: dict = {"checkpoint": checkpoint, "alphas": alphas}
    try:
        data["rows"] = evaluate_interpolation(checkpoint_spec(path), path, alphas)
        message = f"interpolation of {checkpoint}: {len(alphas)} models between the base and it evaluated"
    except Exception as err:  # the event tells the user; the worker goes on
        log.exception("interpolation of %s %s failed", job_id, checkpoint)
        data["error"] = f"{type(err).__name__}: {err}"
        message = f"interpolation of {checkpoint} failed: {data['error']}"
    event = JobEvent(job_id=job_id, step=step_of(checkpoint), kind="interpolation",
                     message=message, data=data)
    return _side_task_ends(sessions, event, side_task)


@shared_task(name=EVALUATE_TASK, acks_late=True)
def evaluate_task(job_id: str, task: str, checkpoints: list[str], side_task: str | None = None) -> str:
    """Score the task dataset ``task`` on each of ``checkpoints`` (``base`` or ``step-N``) of ``job_id``."""
    return record_task_evaluation(_settings(), job_id, task, checkpoints, side_task)


def record_task_evaluation(settings: Settings, job_id: str, task: str, checkpoints: list[str],
                           side_task: str | None = None) -> str:
    """Run the engine's task evaluation (lm-eval) of each model in this process and store a row per model (its
    metrics or its error), or the error that stopped them all, as a ``task-evaluation`` event of the job (and the
    outcome on the side task, if given); returns ``done``, ``failed``, or ``skipped`` for a job deleted since."""
    from mol_engine.task_eval import check_task_file
    from mol_engine.task_eval import evaluate_task as score
    from store.models import available_models

    sessions = sessions_for(settings.db_url)
    if not _side_task_starts(sessions, job_id, side_task, "task evaluation"):
        return "skipped"
    with sessions() as db:
        job, dataset = db.get(Job, job_id), db.get(Dataset, task)
        base = job and job.spec.get("base_model")  # None: deleted since; its event is not recorded (below)
        path, filename = dataset and dataset.path, dataset and dataset.filename
    data: dict = {"task": task, "filename": filename, "checkpoints": checkpoints}
    try:
        task_file = check_task_file(path or f"dataset '{task}' (deleted)")
        data["kind"], data["rows"] = task_file.kind, []
        for name in checkpoints:
            model = available_models(settings).get(base) if name == "base" else \
                settings.run_dir(job_id).checkpoint(name)
            try:
                data["rows"].append({"checkpoint": name} | score(model or f"base model '{base}'", task_file))
            except Exception as err:  # this model's row says why; the others are scored all the same
                log.exception("task evaluation of %s %s failed", job_id, name)
                data["rows"].append({"checkpoint": name, "error": f"{type(err).__name__}: {err}"})
        message = f"task evaluation of {filename}: {len(checkpoints)} model(s) scored"
    except Exception as err:  # the event tells the user; the worker goes on
        log.exception("task evaluation of %s failed", job_id)
        data["error"] = f"{type(err).__name__}: {err}".replace(str(path), str(filename))
        message = f"task evaluation of {filename} failed: {data['error']}"
    steps = [step_of(name) for name in checkpoint_names(checkpoints)]
    event = JobEvent(job_id=job_id, step=max(steps, default=0), kind="task-evaluation", message=message, data=data)
    return _side_task_ends(sessions, event, side_task)


def _side_task_starts(sessions: sessionmaker, job_id: str, side_task: str | None, what: str) -> bool:
    """Whether the side task ``what`` of ``job_id`` is to run: False (and a log line) when the job was deleted since
    the request; else its side task, if given, is marked ``running``."""
    with sessions.begin() as db:
        if db.get(Job, job_id) is None:
            log.info("%s of job %s skipped: the job was deleted", what, job_id)
            return False
        if side_task:
            db.execute(update(SideTask).where(SideTask.id == side_task, SideTask.status == "queued")
                       .values(status="running"))
    return True


def _side_task_ends(sessions: sessionmaker, event: JobEvent, side_task: str | None) -> str:
    """Store a side task's ``event`` and mark its side task, if given, ``done`` or ``failed`` (the event's data has
    an ``error``), in one transaction; returns that outcome, or ``skipped`` (logged) when the job was deleted
    while it ran."""
    outcome = "failed" if "error" in event.data else "done"
    try:
        with sessions.begin() as db:
            if db.get(Job, event.job_id, with_for_update=True) is None:  # locked: a delete waits for this commit
                raise LookupError(event.job_id)
            db.add(event)
            if side_task:
                db.execute(update(SideTask).where(SideTask.id == side_task)
                           .values(status=outcome, finished_at=utcnow()))
    except (LookupError, IntegrityError):  # IntegrityError: deleted between the read and the insert (SQLite)
        log.info("%s of job %s not recorded: the job was deleted while it ran", event.kind, event.job_id)
        return "skipped"
    return outcome


def _is_stale_delivery(job: Job | None, settings: Settings) -> bool:
    """Whether a delivered message is certainly not runnable: its job is gone or ended, or runs under a live lease.
    (Whether we may run it is decided by the runner's lease; this only spares starting a process for nothing.)"""
    if job is None or job.status not in ACTIVE:
        return True
    heartbeat = job.heartbeat_at.replace(tzinfo=utcnow().tzinfo) if job.heartbeat_at else None
    return job.status == "running" and not lease_is_dead(job.lease_owner, heartbeat, settings.lease_timeout_s)


def _nproc(job: Job) -> int:
    """The processes ``job`` asks for (specs stored before the field existed ask for one)."""
    return int((job.spec or {}).get("nproc", 1))


def _end_group(child: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def reconcile(settings: Settings | None = None, enqueue: Callable[..., None] | None = None) -> list[str]:
    """Release dead leases (``store.jobs.release_dead_leases``, as the API's sweeper does), then send a message
    for each job left behind (re-queued from a dead lease, queued again after it ran, or queued for long) whose
    message the broker does not hold, with ``enqueue(job_id, nproc=N)`` (default: this worker's broker); returns
    the ids sent."""
    settings = settings or _settings()
    sessions = sessions_for(settings.db_url)
    released = {job_id for job_id, status in release_dead_leases(sessions, settings.lease_timeout_s).items()
                if status == "queued"}
    stuck_since = utcnow() - timedelta(seconds=settings.lease_timeout_s)
    with sessions() as db:
        # a job that ran before (released from a dead lease, here or by the API's sweeper) has no message in
        # flight; a new one's message may still be on its way from the API: it gets lease_timeout_s
        candidates = {job.id: _nproc(job) for job in db.scalars(select(Job).where(Job.status == "queued"))
                      if job.id in released or job.attempt > 0 or as_utc(job.queued_at) < stuck_since}
    if not candidates:
        return []
    try:
        waiting = waiting_job_ids(settings)  # None: a broker whose queues cannot be read; send them all
    except Exception:  # any broker client error: nothing can be sent now; the reconciler thread must live on
        log.exception("could not read the job queues; the next reconcile pass will try again")
        return []
    lost = [job_id for job_id in candidates if waiting is None or job_id not in waiting]
    sent = [job_id for job_id in lost if _send(enqueue or job_sender(settings), job_id, candidates[job_id])]
    if sent:
        mark_sent(sessions, sent)  # the next grace period counts from this send
    return sent


def _worker_name() -> str:
    """This worker's name in ``workers_seen``: host:pid of its (solo pool) process, which runs its tasks too."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _beat(sessions: sessionmaker, settings: Settings) -> None:
    """Record that this worker is alive now, with its capacity, device and the job it runs (GET /v1/workers); a
    database that does not answer is logged, not raised: the next beat tries again, and a job still runs."""
    try:
        with sessions.begin() as db:
            db.merge(WorkerSeen(name=_worker_name(), last_seen=utcnow(), capacity=settings.worker_capacity,
                                device=_device, memory_mib=_memory_mib, job_id=_current_job))
    except Exception:  # any database error: the heartbeat thread and the job's task must outlive it
        log.exception("could not record this worker's heartbeat; the next beat tries again")


def _send(enqueue: Callable[..., None], job_id: str, nproc: int) -> bool:
    """Whether the broker took ``job_id``. When it refuses (Redis down), the job stays ``queued`` in the database
    and a later pass sends it again, once it has waited ``lease_timeout_s``."""
    try:
        enqueue(job_id, nproc=nproc)
    except Exception:  # any broker client error; the reconciler thread must outlive the outage
        log.exception("could not re-queue job %s; the next reconcile pass will try again", job_id)
        return False
    return True


@signals.worker_ready.connect
def _reconcile_on_start(**_kwargs) -> None:
    """Re-queue what a dead worker left behind now, then keep checking in the background."""
    settings = _settings()
    sessions = sessions_for(settings.db_url)
    reconcile(settings)

    def loop() -> None:
        global _device, _memory_mib
        _device, _memory_mib = describe_device(), device_memory_mib()
        last_reconcile = time.monotonic()
        while True:
            _beat(sessions, settings)
            if time.monotonic() - last_reconcile > max(5.0, settings.lease_timeout_s / 2):
                reconcile(settings)
                last_reconcile = time.monotonic()
            time.sleep(settings.heartbeat_s)

    threading.Thread(target=loop, name="mol-reconciler", daemon=True).start()
