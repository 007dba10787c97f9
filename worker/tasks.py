"""The Celery task that runs the next job of a queue, and the reconciler that keeps the queues' tokens in step.

A message on a job queue is a token for that queue (its process count), not for one job: the task that takes it
starts ``python -m worker.runner --next NPROC`` in a child process with its own process group, which takes the job
the scheduler chooses at that moment (store/scheduling.py: fair share across owners, then priority, then age)
under its lease; the task watches it, and when the user cancels gives it ``cancel_grace_s`` to stop cooperatively
before ending the whole group. A pause needs no grace: the runner saves a checkpoint at its next step and ends the job
``paused``, and the worker is free. Killing the worker kills the child too (it notices its parent is gone); the job
stays ``running`` with a dead lease, and the reconciler of the next worker start re-queues it to resume.

The tokens of a queue number at least its queued jobs: each submit sends one, and so does each re-queue. A token
that finds no queued job is dropped (its job was cancelled); one that finds only jobs of owners at their running
limit goes back to the queue and the worker waits ``scheduler_retry_s`` before its next task. The reconciler sends
a queue the tokens it lacks (a Redis wipe, a send that failed, a delivery to a worker that died): the queued jobs
that need one (re-queued from a dead lease, queued again after they ran, or queued for longer than
``lease_timeout_s``) less the tokens the broker holds beyond those of the jobs queued more recently.
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
from store.dispatch import EVALUATE_TASK, INTERPOLATE_TASK, TASK_NAME, job_sender, nproc_of_queue
from store.jobs import end_cancelled_run, mark_sent, release_dead_leases
from store.leases import as_utc
from store.scheduling import next_job
from store.settings import Settings

from .broker_queues import waiting_tokens
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
def run_job(self, job_id: str, nproc: int | None = None) -> str:
    """Run the job the scheduler chooses now from the queue of ``nproc`` processes (else the queue the message came
    on, else ``job_id``'s: a hint, the job the token was sent for) until it ends; returns the runner's final word,
    ``skipped`` (no job queued: a surplus token, dropped) or ``waiting`` (only jobs of owners at their running
    limit: the token goes back to the queue)."""
    settings = _settings()
    sessions = sessions_for(settings.db_url)
    nproc = nproc or nproc_of_queue((self.request.delivery_info or {}).get("routing_key")) or \
        _hint_nproc(sessions, job_id)
    for _ in range(3):  # a job chosen here may be leased by another worker first: choose again
        with sessions() as db:
            chosen, queued = next_job(db, settings, nproc)
        if not queued:
            log.info("token for %s-process jobs (sent for %s) dropped: no job is queued", nproc, job_id)
            return "skipped"
        if chosen is None:
            break
        outcome = _run_next(sessions, settings, nproc)
        if outcome is not None:
            return outcome
    _send(job_sender(settings), job_id, nproc)  # the queued jobs still need this token: back to the queue
    time.sleep(settings.scheduler_retry_s)  # ... and this worker waits before it takes one again
    return "waiting"


def _run_next(sessions: sessionmaker, settings: Settings, nproc: int) -> str | None:
    """Start a runner that takes the next job of ``nproc`` processes and watch it to its end; its final word, or
    None when it took no job (another worker leased the ones that may run first)."""
    global _current_job
    child = subprocess.Popen([sys.executable, "-m", "worker.runner", "--next", str(nproc)], start_new_session=True,
                             stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    first = (child.stdout.readline() if child.stdout else "").strip()
    if not first.startswith("job "):
        child.wait()
        return None
    job_id = first.removeprefix("job ")
    _current_job = job_id
    _beat(sessions, settings)  # GET /v1/workers shows the job now, not at the next heartbeat
    try:
        with _job_log(settings, job_id) as job_log:
            outcome = _watch_runner(sessions, settings, job_id, child, job_log)
    finally:
        _current_job = None
        _beat(sessions, settings)
    if outcome == "requeued":  # a rank died (or a pause was withdrawn): the runner put the job back to resume
        _send(job_sender(settings), job_id, nproc)
    return outcome


def _hint_nproc(sessions: sessionmaker, job_id: str) -> int:
    """The processes ``job_id`` asks for (one if it is gone)."""
    with sessions() as db:
        job = db.get(Job, job_id)
    return _nproc(job) if job is not None else 1


@contextlib.contextmanager
def _job_log(settings: Settings, job_id: str) -> Iterator[TextIO]:
    """The job's log (GET /v1/jobs/{id}/log), opened to append this worker's own lines about this attempt (the
    runner appends its stderr: progress, events, warnings, a traceback), each of these stamped."""
    path = settings.job_log_file(job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", buffering=1) as handle:
        _log_line(handle, f"worker {_worker_name()} ({_device or 'device unknown'}) starts the job's runner")
        yield handle


def _log_line(handle: TextIO, text: str) -> None:
    handle.write(f"[{utcnow().isoformat(timespec='seconds')}] {text}\n")
    handle.flush()


def _watch_runner(sessions: sessionmaker, settings: Settings, job_id: str, child: subprocess.Popen,
                  job_log: TextIO) -> str:
    """Watch the runner of ``job_id`` until it ends, ending its process group ``cancel_grace_s`` after the user
    cancelled; returns the runner's last word (``cancelled`` when it was ended)."""
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
    from store.lineage import trained_from
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
            model = trained_from(settings, job_id, base, available_models(settings)) if name == "base" else \
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
    """Release dead leases (``store.jobs.release_dead_leases``, as the API's sweeper does), then send each job queue
    the tokens it lacks, with ``enqueue(job_id, nproc=N)`` (default: this worker's broker), each naming one of the
    jobs that needs it; returns the ids named.

    The jobs that need a token are those left behind (re-queued from a dead lease, queued again after they ran, or
    queued for longer than ``lease_timeout_s``); those queued more recently may still have theirs on the way from
    the API, so the tokens the broker holds count for them first: a queue is sent ``needing - (waiting - recent)``.
    """
    settings = settings or _settings()
    sessions = sessions_for(settings.db_url)
    released = {job_id for job_id, status in release_dead_leases(sessions, settings.lease_timeout_s).items()
                if status == "queued"}
    stuck_since = utcnow() - timedelta(seconds=settings.lease_timeout_s)
    needing: dict[int, list[str]] = {}
    recent: dict[int, int] = {}
    with sessions() as db:
        for job in db.scalars(select(Job).where(Job.status == "queued", Job.cancel_requested.is_(False))
                              .order_by(Job.created_at, Job.id)):
            # a job that ran before (released from a dead lease, here or by the API's sweeper) has no token in
            # flight; a new one's may still be on its way from the API: it gets lease_timeout_s
            if job.id in released or job.attempt > 0 or as_utc(job.queued_at) < stuck_since:
                needing.setdefault(_nproc(job), []).append(job.id)
            else:
                recent[_nproc(job)] = recent.get(_nproc(job), 0) + 1
    if not needing:
        return []
    try:
        waiting = waiting_tokens(settings)  # None: a broker whose queues cannot be read; send them all
    except Exception:  # any broker client error: nothing can be sent now; the reconciler thread must live on
        log.exception("could not read the job queues; the next reconcile pass will try again")
        return []
    sent = []
    for nproc, job_ids in needing.items():
        spare = 0 if waiting is None else max(0, waiting.get(nproc, 0) - recent.get(nproc, 0))
        sent += [job_id for job_id in job_ids[spare:] if _send(enqueue or job_sender(settings), job_id, nproc)]
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
