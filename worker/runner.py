"""Run one job: take the job's lease, train with callbacks that write to the database, finish.

Started by the Celery task as ``python -m worker.runner --next NPROC`` in its own process group, so a cancelled
job's whole process tree can be ended after a grace period: it takes the job the scheduler chooses from the queue
of NPROC processes (store/scheduling.py), says which on its first line of stdout, and appends its stderr to that
job's log. (``python -m worker.runner JOB_ID`` runs one given job.) The lease (owner + heartbeat, taken with
compare-and-set) makes sure one job never runs twice at once, whatever the broker redelivers.

A job with ``nproc: 1`` trains in this process. With more, this process keeps the lease (and its heartbeat)
and starts ``torchrun`` for the ranks (worker/ranks.py): rank 0 records metrics and events and reads the cancel
and pause flags, the engine agrees on stopping (or pausing) across ranks, and rank 0's last word comes back in a
small report file.
A rank that dies makes torchrun fail: the job goes back to the queue and resumes from its last checkpoint,
until ``job_attempts`` attempts are used up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import sessionmaker

from mol_engine.callbacks import Callback, ConsoleLogger
from mol_engine.spec import JobSpec
from store.dataset_names import relabel, stored_names
from store.db import Dataset, Job, JobEvent, MetricPoint, sessions_for
from store.jobs import acquire_lease, end_paused_run, finish, renew_lease, requeue
from store.lineage import is_checkpoint_ref, lineage_of, parse_ref, reference_checkpoint, start_model
from store.models import available_models
from store.scheduling import take_next
from store.settings import Settings
from store.usage import LeaseMeter, attempt_of, record_storage, record_tokens, tree_bytes
from store.webhook_outbox import record_job_event_for_webhooks


class LeaseHeartbeat:
    """Refreshes the job's lease (``heartbeat_at``, while ``holder`` holds it) every ``every`` seconds, in a thread,
    and meters the attempt's accelerator time (store/usage.py) after each beat that still held it, and at close."""

    def __init__(self, sessions: sessionmaker, job_id: str, holder: str, every: float) -> None:
        self.sessions, self.job_id, self.holder = sessions, job_id, holder
        self.meter = lease_meter(sessions, job_id)
        self._held = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(every,), daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            self._held = renew_lease(self.sessions, self.job_id, self.holder)
            self._meter()

    def _meter(self) -> None:
        if self._held:  # a lease taken over is the new runner's to meter
            try:
                self.meter.record()
            except Exception:  # metering must never stop a run: the next beat writes the same figure again
                traceback.print_exc()

    def close(self) -> None:
        self._stop.set()
        self._meter()


def lease_meter(sessions: sessionmaker, job_id: str) -> LeaseMeter:
    """The meter of the attempt this runner holds, counted from when it took the lease."""
    with sessions() as db:
        key, started = attempt_of(db, job_id), db.get(Job, job_id).started_at
    return LeaseMeter(sessions, key, started)


def measure_run_dir(sessions: sessionmaker, job_id: str, settings: Settings) -> None:
    """Record the job's run directory size (its storage), after a checkpoint and when the runner ends."""
    try:
        with sessions() as db:
            owner = db.scalar(select(Job.owner).where(Job.id == job_id))
        if owner is not None:
            record_storage(sessions, job_id, owner, tree_bytes(settings.run_dir(job_id).path))
    except Exception:  # a figure for the quota, never a reason to fail the job
        traceback.print_exc()


class DatabaseRecorder(Callback):
    """Writes metric points and events to the database, reads the cancel and pause flags (in one read after each
    step: ``should_pause`` answers from the read ``should_stop`` made), and (given ``heartbeat_s``)
    heartbeats the lease; rank 0 of a several-process job records without a heartbeat (its runner beats).

    A run it stops for another reason than the user's cancel (its worker gone, its lease taken over) ends with an
    ``interrupted`` event, not the engine's ``cancelled``: the job is not cancelled, it resumes."""

    def __init__(self, sessions: sessionmaker, job_id: str, holder: str, heartbeat_s: float | None,
                 labels: dict[str, str] | None = None, settings: Settings | None = None) -> None:
        self.sessions, self.job_id, self.holder = sessions, job_id, holder
        self.settings = settings
        with sessions() as db:
            self.attempt = attempt_of(db, job_id)  # the key its processed tokens are counted under
        self.labels = labels or {}  # the engine names stored files; the owner sees their own names
        self._parent = os.getppid()
        self._heartbeat = LeaseHeartbeat(sessions, job_id, holder, heartbeat_s) if heartbeat_s else None
        self.lease_lost = False
        self._pause = False  # pause_requested as should_stop last read it

    def close(self) -> None:
        if self._heartbeat:
            self._heartbeat.close()

    @property
    def orphaned(self) -> bool:
        """Whether the process that started this one is gone (a killed worker, or torchrun)."""
        return os.getppid() != self._parent

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        with self.sessions.begin() as db:
            db.add(MetricPoint(job_id=self.job_id, step=step, values=metrics))
            job = db.get(Job, self.job_id)
            job.step = max(job.step, step)
            job.last_metrics = {**job.last_metrics, **metrics}
            if isinstance(tokens := metrics.get("train/tokens"), int | float):
                db.flush()  # the job's row first: its lock orders two writers of one job
                record_tokens(db, self.attempt, int(tokens))

    def interruption(self) -> tuple[str, str] | None:
        """(cause, why in words) when this runner stops the run for another reason than the user's cancel."""
        if self.orphaned:
            return "worker_gone", "its worker is gone"
        if self.lease_lost:
            return "lease_lost", "its lease was taken over (this runner stalled past the lease timeout)"
        return None

    def on_event(self, event: dict[str, Any]) -> None:
        if event["kind"] == "cancelled" and (interrupted := self.interruption()):
            event = event | {"kind": "interrupted", "cause": interrupted[0],
                             "message": f"interrupted: {interrupted[1]}; {event['message']}; the job resumes from "
                                        "its last checkpoint"}
        data = {k: v for k, v in event.items() if k not in ("step", "kind", "message")}
        if isinstance(data.get("file"), str):
            data["file"] = relabel(data["file"], self.labels)
        with self.sessions.begin() as db:
            db.add(JobEvent(job_id=self.job_id, step=event["step"], kind=event["kind"],
                            message=relabel(event["message"], self.labels), data=data))
            if event["kind"] == "budget":
                record_job_event_for_webhooks(db, db.get(Job, self.job_id), "budget", data)
        if event["kind"] == "checkpoint" and self.settings is not None:
            measure_run_dir(self.sessions, self.job_id, self.settings)

    def on_rewind(self, step: int) -> None:
        with self.sessions.begin() as db:
            db.execute(delete(MetricPoint).where(MetricPoint.job_id == self.job_id, MetricPoint.step > step))
            job = db.get(Job, self.job_id)
            job.step = max(step, 0)

    def should_stop(self) -> bool:
        if self.orphaned:  # the worker that started us is gone: stop, a new one resumes
            return True
        with self.sessions() as db:
            cancel, pause, owner = db.execute(select(Job.cancel_requested, Job.pause_requested, Job.lease_owner)
                                              .where(Job.id == self.job_id)).one()
        if owner != self.holder:  # our lease was taken for dead (a long stall) and the job re-queued: stop at once
            self.lease_lost = True
        self._pause = bool(pause)
        return bool(cancel) or self.lease_lost

    def should_pause(self) -> bool:
        return self._pause


def resolve_spec(sessions: sessionmaker, job: Job, settings: Settings) -> JobSpec:
    """The job's spec with model and dataset ids replaced by local paths: a continued job's base is its copy of the
    parent's checkpoint (store.lineage.start_model), its reference model the original base unless the spec names
    one (a model id, or a checkpoint copied the same way)."""
    models = available_models(settings)
    with sessions() as db:
        paths = {d.id: d.path for d in db.scalars(select(Dataset).where(Dataset.owner == job.owner))}
    spec = JobSpec.model_validate(job.spec)
    lineage = lineage_of(job)
    if lineage and spec.reference_model is None:  # the KL anchors to the first base of the chain
        spec = spec.model_copy(update={"reference_model": lineage.original_base_model})

    def resolve(ref: str) -> str:
        if ref == spec.base_model and lineage:
            return str(start_model(settings, job))
        if ref == spec.reference_model and is_checkpoint_ref(ref):
            with sessions() as db:
                return str(reference_checkpoint(db, settings, job, parse_ref(ref)))
        if ref in (spec.base_model, spec.reference_model):
            if ref not in models:
                raise ValueError(f"model '{ref}' is no longer offered by this server")
            return str(models[ref])
        if ref not in paths:
            raise ValueError(f"dataset '{ref}' no longer exists")
        return paths[ref]

    return spec.resolve_paths(resolve)


def owner_dataset_names(sessions: sessionmaker, owner: str) -> dict[str, str]:
    """Each of the owner's datasets as the server stores it -> as the owner knows it (store.dataset_names)."""
    with sessions() as db:
        return stored_names(db, owner)



def _fail(sessions: sessionmaker, job_id: str, holder: str, error: str) -> str:
    """``failed``, the job we hold ended so with ``error``; ``lease-lost`` when another runner took it over
    meanwhile (its state is theirs to write)."""
    return "failed" if finish(sessions, job_id, "failed", holder, error) else "lease-lost"


def run(job_id: str, settings: Settings | None = None) -> str:
    """Run (or resume) one job to its end or its pause; returns its status then (``paused`` included),
    ``skipped`` if it is not ours to run, ``orphaned`` if our worker died, ``requeued`` if a rank died (or the
    owner withdrew a pause while the run saved it) and the job waits to resume, or ``lease-lost`` if another
    runner took the job over (this one was taken for dead)."""
    settings = settings or Settings()
    sessions = sessions_for(settings.db_url)
    holder = _holder()
    if not acquire_lease(sessions, job_id, holder, settings.lease_timeout_s):
        return "skipped"
    return _run_leased(sessions, job_id, holder, settings)


def _holder() -> str:
    """This runner's name on the leases it takes: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_next(nproc: int, settings: Settings | None = None) -> str:
    """Take the job the scheduler chooses from the queue of ``nproc`` processes (store.scheduling.take_next), say
    ``job <id>`` on stdout's first line, append stderr to its log, and run it as :func:`run`; ``skipped`` (the only
    line) when no job may run now."""
    settings = settings or Settings()
    sessions = sessions_for(settings.db_url)
    holder = _holder()
    job_id = take_next(sessions, settings, nproc, holder)
    if job_id is None:
        return "skipped"
    path = settings.job_log_file(job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 2)  # our traceback, progress and events, and those of the ranks we start, into the job's log
    os.close(log)
    print(f"job {job_id}", flush=True)
    return _run_leased(sessions, job_id, holder, settings)


def _run_leased(sessions: sessionmaker, job_id: str, holder: str, settings: Settings) -> str:
    """Run the job ``holder`` has just leased (see :func:`run`)."""
    with sessions() as db:
        job = db.get(Job, job_id)
    if job.attempt > settings.job_attempts:
        return _fail(sessions, job_id, holder, f"gave up after {settings.job_attempts} attempts")
    labels = owner_dataset_names(sessions, job.owner)
    heartbeat = LeaseHeartbeat(sessions, job_id, holder, settings.heartbeat_s)  # copying a parent's checkpoint
    try:
        spec = resolve_spec(sessions, job, settings)
    except Exception as err:  # a dataset deleted since submit, a model gone, a parent's checkpoint pruned
        return _fail(sessions, job_id, holder, relabel(f"{type(err).__name__}: {err}", labels))
    finally:
        heartbeat.close()
    try:
        if spec.nproc == 1:
            return _run_here(sessions, job_id, holder, spec, labels, settings)
        return _run_ranks(sessions, job, holder, spec.nproc, settings)
    finally:
        measure_run_dir(sessions, job_id, settings)


def _run_here(sessions: sessionmaker, job_id: str, holder: str, spec: JobSpec, labels: dict[str, str],
              settings: Settings) -> str:
    """Train in this process (one rank)."""
    from mol_engine.train import train

    recorder = DatabaseRecorder(sessions, job_id, holder, settings.heartbeat_s, labels, settings)
    try:
        # progress and events also as lines on stderr: the job's log (worker/tasks.py), which the owner can tail
        result = train(spec, settings.run_dir(job_id).path, [recorder, ConsoleLogger()], resume=True)
    except Exception as err:  # any failure becomes the job's error message
        traceback.print_exc()  # the whole story into the job's log; the message alone into the job
        recorder.close()
        return _fail(sessions, job_id, holder, relabel(f"{type(err).__name__}: {err}", labels))
    recorder.close()
    if result.status == "cancelled" and recorder.orphaned:
        return "orphaned"  # not a user's cancel: leave the job running for the next worker to resume
    if result.status == "paused":
        return end_paused_run(sessions, job_id, holder) or "lease-lost"
    if not finish(sessions, job_id, result.status, holder, stop_reason=result.reason):
        return "lease-lost"  # another worker resumes (or has resumed) the job: its state is theirs to write
    return result.status


def torchrun_command(job_id: str, lease_owner: str, nproc: int, report: Path) -> list[str]:
    """The command line that runs the ranks of ``job_id`` on this node (worker/ranks.py under torchrun)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "--max_restarts", "0", "-m", "worker.ranks", job_id, lease_owner, str(report)]


def _run_ranks(sessions: sessionmaker, job: Job, holder: str, nproc: int, settings: Settings) -> str:
    """Run the job's ranks under torchrun (they see this worker's CUDA_VISIBLE_DEVICES), keeping the lease here.

    If our worker dies, the ranks are ended and the job is left running for the reconciler to re-queue. If a
    rank dies (or rank 0 lost a peer), the job is re-queued at once, or failed when its attempts are used up;
    an error of the job itself on rank 0 fails it at once."""
    heartbeat = LeaseHeartbeat(sessions, job.id, holder, settings.heartbeat_s)
    parent = os.getppid()
    with tempfile.TemporaryDirectory(prefix="mol-ranks-") as folder:
        report = Path(folder) / "rank0.json"
        # stdout to stderr: our own stdout carries only our last word, which the task reads
        ranks = subprocess.Popen(torchrun_command(job.id, holder, nproc, report), stdout=sys.stderr)
        signal.signal(signal.SIGTERM, lambda *_: _stop_ranks(ranks, exit_after=True))
        while ranks.poll() is None:
            time.sleep(0.5)
            if os.getppid() != parent:  # our worker is gone: stop every rank; a new worker resumes the job
                _stop_ranks(ranks)
                heartbeat.close()
                return "orphaned"
        heartbeat.close()
        rank0 = json.loads(report.read_text()) if report.is_file() else {}
    if ranks.returncode == 0 and rank0.get("status") == "paused":
        return end_paused_run(sessions, job.id, holder) or "lease-lost"
    if ranks.returncode == 0 and rank0.get("status") in ("succeeded", "cancelled", "failed"):
        if not finish(sessions, job.id, rank0["status"], holder, rank0.get("error"), rank0.get("reason")):
            return "lease-lost"
        return rank0["status"]
    if rank0.get("status") == "error" and not rank0.get("peer_lost"):  # the job's own fault: retrying won't help
        return _fail(sessions, job.id, holder, rank0["error"])
    reason = rank0.get("error") or f"a process of the job ended unexpectedly (torchrun exit code {ranks.returncode})"
    if job.attempt >= settings.job_attempts:
        return _fail(sessions, job.id, holder, f"{reason}; gave up after {settings.job_attempts} attempts")
    return "requeued" if requeue(sessions, job.id, holder, reason) else "skipped"


def _stop_ranks(ranks: subprocess.Popen, exit_after: bool = False, wait_s: float = 10) -> None:
    """End torchrun, which ends its ranks (each in a session of its own); SIGKILL after ``wait_s``."""
    if ranks.poll() is None:
        ranks.terminate()
        try:
            ranks.wait(wait_s)
        except subprocess.TimeoutExpired:
            ranks.kill()
    if exit_after:
        sys.exit(143)


if __name__ == "__main__":
    print(run_next(int(sys.argv[2])) if sys.argv[1] == "--next" else run(sys.argv[1]))
