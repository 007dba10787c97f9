"""GET /v1/workers: the workers seen lately, each with its device, capacity, heartbeat and the job it runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from store.db import Job, WorkerSeen, utcnow
from store.leases import as_utc, worker_alive_within_s

from ..deps import DB, Owner, Svc
from ..schemas.common import errors
from ..schemas.service import WorkerList, WorkerStatusOut

router = APIRouter(tags=["health"], responses=errors(401, 422))
Limit = Annotated[int, Query(ge=1, le=200, description="workers listed, latest heartbeat first")]


@router.get("/v1/workers", response_model=WorkerList)
def list_workers(owner: Owner, db: DB, svc: Svc, limit: Limit = 50) -> WorkerList:
    """The workers seen within ``MOL_WORKERS_LISTED_H``, alive ones (a heartbeat within ``MOL_LEASE_TIMEOUT_S``)
    first. The job a worker runs is named to its owner only; another owner sees the worker ``busy``."""
    now, within = utcnow(), worker_alive_within_s(svc.settings)
    since = now - timedelta(hours=svc.settings.workers_listed_h)
    rows = list(db.scalars(select(WorkerSeen).where(WorkerSeen.last_seen >= since)
                           .order_by(WorkerSeen.last_seen.desc(), WorkerSeen.name).limit(limit)))
    running = {w.job_id for w in rows if w.job_id}
    mine = {job.id: job.name for job in db.scalars(select(Job).where(Job.id.in_(running), Job.owner == owner))}
    workers = [WorkerStatusOut(name=w.name, alive=as_utc(w.last_seen) >= now - timedelta(seconds=within),
                               device=w.device, capacity=w.capacity, memory_mib=w.memory_mib,
                               last_seen=w.last_seen, busy=w.job_id is not None,
                               job_id=w.job_id if w.job_id in mine else None, job_name=mine.get(w.job_id))
               for w in rows]
    workers.sort(key=lambda w: not w.alive)  # stable: within each group, the latest heartbeat first
    return WorkerList(data=workers, alive_within_s=within)
