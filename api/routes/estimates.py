"""GET /v1/estimate: how long a job would run on this server, from the owner's finished jobs (api/estimate.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ..deps import Owner, Svc
from ..estimate import EstimateQuery, estimate
from ..schemas.common import errors
from ..schemas.jobs import EstimateOut

router = APIRouter()


@router.get("/v1/estimate", response_model=EstimateOut, tags=["jobs"], responses=errors(401, 422))
def job_estimate(owner: Owner, svc: Svc, query: Annotated[EstimateQuery, Query()]) -> dict:
    """Seconds a job of this base model and shape runs (setup, ``max_steps`` steps, its evaluations and saves),
    measured on the owner's newest finished jobs of the same model and shape; ``seconds`` null when none ran.
    The dashboard's New job form shows it before a submit."""
    settings = svc.settings
    return estimate(svc.sessions, owner, query, scan=settings.estimate_scan_jobs, keep=settings.estimate_jobs)
