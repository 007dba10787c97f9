"""What /healthz probes: the database, the broker, the workers seen lately and the jobs waiting for one."""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import func, select, text

from store.db import Job, WorkerSeen, utcnow

from ..schemas.common import utc_iso


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
