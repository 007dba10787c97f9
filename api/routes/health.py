"""GET /healthz: whether the service can serve, for a load balancer, `mol up` and the dashboard (the probes:
api/services/health.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from store.leases import worker_alive_within_s

from ..deps import OwnerOrNone, Svc
from ..schemas.service import HealthOut
from ..services.health import broker_status, database_status, jobs_waiting, workers_seen

router = APIRouter()


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
