"""GET /healthz, GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy import func, select, text

from mol_engine.spec import JobSpec
from store.db import Job, WorkerSeen, utcnow
from store.leases import worker_alive_within_s
from store.models import available_models, demo_status, model_type

from ..deps import Owner, OwnerOrNone, Svc
from ..schemas import DemoOut, HealthOut, ModelList, ModelOut, errors, utc_iso
from .completions import checkpoint_model, checkpoint_models, mtime_s, openai_error, resolve_model

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=errors(401, 422))
def list_models(owner: Owner, svc: Svc, include: Literal["checkpoints"] | None = None) -> ModelList:
    """The base models on offer, by name and type (their paths on the server are not shown), in OpenAI's list shape
    (``OpenAI(...).models.list()``); with ``include=checkpoints`` also the owner's checkpoints, which the
    completions routes take as ``model``."""
    bases = [base_model(name, path) for name, path in available_models(svc.settings).items()
             if (path / "config.json").is_file()]
    return ModelList(data=bases + (checkpoint_models(svc, owner) if include == "checkpoints" else []))


@router.get("/v1/models/{model_id}", response_model=ModelOut, tags=["models"], responses=errors(401, 404, 409, 422))
def retrieve_model(model_id: str, owner: Owner, svc: Svc):
    """One model by its id (``OpenAI(...).models.retrieve``): a base model, or one of the owner's checkpoints as
    ``<job_id>:step-N`` or ``<job_id>:best`` (409 while the job has no best); 404 for anything else. Errors carry
    OpenAI's ``error`` beside ``detail``, as the completions routes' do."""
    try:
        source = resolve_model(svc, owner, model_id)
    except HTTPException as err:
        return openai_error(err)
    if model_id in available_models(svc.settings):
        return base_model(model_id, source.path)
    return checkpoint_model(model_id, source.path, source.base, owner)


def base_model(name: str, path: Path) -> ModelOut:
    """The model object of the base model ``name`` in directory ``path``."""
    return ModelOut(id=name, created=mtime_s(path / "config.json"), model_type=model_type(path))


@router.get("/v1/demo", response_model=DemoOut, tags=["models"], responses=errors(401))
def demo(owner: Owner, svc: Svc) -> DemoOut:
    """Where the demo model stands: ``ready``; ``building`` with its phase, step/total, elapsed seconds and ETA
    (`mol up` builds it in the background); ``failed``; ``absent``; or ``off``. The dashboard shows it."""
    status = demo_status(svc.settings)
    if status is None:
        return DemoOut(state="off", message="The demo model is off (MOL_DEMO_MODEL=false).")
    return DemoOut(state=status.state, phase=status.phase, step=status.step, total=status.total,
                   elapsed_s=status.elapsed_s, eta_s=status.eta_s, message=status.message)


@router.get("/v1/jobspec", tags=["jobs"], responses=errors(401))
def job_spec_schema(owner: Owner) -> dict:
    """The JSON schema of a job spec, with every default: the dashboard builds its form from it."""
    return JobSpec.model_json_schema()


@router.get("/healthz", tags=["health"], responses={
    200: {"model": HealthOut, "description": "ok, or degraded with its reasons"},
    503: {"model": HealthOut, "description": "the database is unreachable: degraded, with its reasons"}})
def health(svc: Svc, response: Response, caller: OwnerOrNone) -> dict:
    """``ok``, or ``degraded`` with its ``reasons``: the database or the broker unreachable, or jobs waiting while
    no worker has been seen within ``MOL_LEASE_TIMEOUT_S``. HTTP 503 only when the database is unreachable (this
    process can serve nothing); otherwise 200: reads and downloads still work, and a load balancer that took the
    API out (or restarted it) would not bring a worker or the broker back. The details (each part's state, the
    workers by host name, the jobs waiting) only with a valid token: without, ``status`` and ``reasons``."""
    database, broker = database_status(svc.sessions), broker_status(svc.settings)
    within = worker_alive_within_s(svc.settings)
    try:
        workers, waiting = workers_seen(svc.sessions, within_s=within), jobs_waiting(svc.sessions)
    except Exception as err:  # health reports any failure, it never raises
        workers, waiting = f"error: {type(err).__name__}", 0
    reasons = []
    if database != "ok":
        reasons.append(f"database unreachable ({database})")
        response.status_code = 503
    if broker != "ok":
        reasons.append(f"job queue unreachable ({broker})")
    if waiting and not workers:
        reasons.append(f"{waiting} job(s) waiting and no worker seen in the last {within:g} s")
    public = {"status": "degraded" if reasons else "ok", "reasons": reasons}
    if caller is None:
        return public
    return public | {"database": database, "broker": broker, "workers": workers, "jobs_waiting": waiting}


def database_status(sessions) -> str:
    """``ok`` when the database answers."""
    try:
        with sessions() as db:
            db.execute(text("SELECT 1"))
        return "ok"
    except Exception as err:  # any failure is a health finding
        return f"error: {type(err).__name__}"


def jobs_waiting(sessions) -> int:
    """How many jobs are queued, of every owner."""
    with sessions() as db:
        return db.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0


def broker_status(settings) -> str:
    """``ok`` when the broker answers (Redis) or its folder is writable (filesystem transport)."""
    if settings.uses_filesystem_broker:
        folder = settings.broker_dir
        return "ok" if folder.is_dir() and os.access(folder, os.W_OK) else f"error: {folder} is not writable"
    from kombu import Connection

    try:
        with Connection(settings.broker, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)  # a probe: no 2 s back-off
        return "ok"
    except Exception as err:  # any connection failure is a health finding
        return f"error: {type(err).__name__}"


def workers_seen(sessions, within_s: float) -> list[dict]:
    """Workers whose heartbeat landed in the last ``within_s`` seconds."""
    since = utcnow() - timedelta(seconds=within_s)
    with sessions() as db:
        rows = db.scalars(select(WorkerSeen).where(WorkerSeen.last_seen >= since).order_by(WorkerSeen.name))
        return [{"name": w.name, "last_seen": utc_iso(w.last_seen)} for w in rows]
