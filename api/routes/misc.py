"""GET /healthz and GET /v1/models."""

from __future__ import annotations

import os
from datetime import timedelta

from fastapi import APIRouter
from sqlalchemy import select, text

from mol_engine.spec import JobSpec

from ..db import WorkerSeen, utcnow
from ..deps import Owner, Svc
from ..schemas import ModelOut
from ..validation import available_models, model_type

router = APIRouter()


@router.get("/v1/models", response_model=list[ModelOut], tags=["models"])
def list_models(owner: Owner, svc: Svc) -> list[ModelOut]:
    """The base models on offer, by name and type (their paths on the server are not shown)."""
    return [ModelOut(id=name, model_type=model_type(path))
            for name, path in available_models(svc.settings).items() if (path / "config.json").is_file()]


@router.get("/v1/jobspec", tags=["jobs"])
def job_spec_schema(owner: Owner) -> dict:
    """The JSON schema of a job spec, with every default: the dashboard builds its form from it."""
    return JobSpec.model_json_schema()


@router.get("/healthz", tags=["health"])
def health(svc: Svc) -> dict:
    report: dict = {"status": "ok"}
    try:
        with svc.sessions() as db:
            db.execute(text("SELECT 1"))
        report["database"] = "ok"
    except Exception as err:  # health reports any failure, it never raises
        report["database"], report["status"] = f"error: {type(err).__name__}", "degraded"
    report["broker"] = broker_status(svc.settings)
    try:
        report["workers"] = workers_seen(svc.sessions, within_s=max(60.0, 3 * svc.settings.heartbeat_s))
    except Exception as err:  # same: reported, not raised
        report["workers"] = f"error: {type(err).__name__}"
    if report["broker"] != "ok":
        report["status"] = "degraded"
    return report


def broker_status(settings) -> str:
    """``ok`` when the broker answers (Redis) or its folder is writable (filesystem transport)."""
    if settings.uses_filesystem_broker:
        folder = settings.broker_dir
        return "ok" if folder.is_dir() and os.access(folder, os.W_OK) else f"error: {folder} is not writable"
    from kombu import Connection

    try:
        with Connection(settings.broker, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
        return "ok"
    except Exception as err:  # any connection failure is a health finding
        return f"error: {type(err).__name__}"


def workers_seen(sessions, within_s: float) -> list[dict]:
    """Workers whose heartbeat landed in the last ``within_s`` seconds."""
    since = utcnow() - timedelta(seconds=within_s)
    with sessions() as db:
        rows = db.scalars(select(WorkerSeen).where(WorkerSeen.last_seen >= since).order_by(WorkerSeen.name))
        return [{"name": w.name, "last_seen": w.last_seen.isoformat()} for w in rows]
