"""POST /v1/estimates: the pre-flight estimate of a job spec, peak memory per process and time, on a device or a
live worker (api/preflight.py, mol_engine/estimate.py)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import ValidationError

from mol_engine.estimate import EstimateError
from mol_engine.spec import JobSpec, format_validation_error

from ..checks.job_memory import live_workers, shape_for
from ..deps import DB, Owner, Svc
from ..preflight import UnknownDevice, preflight
from ..schemas.common import errors
from ..schemas.jobs import PreflightIn, PreflightOut
from ..services.submission import continued_from, models_for, submit_problems

router = APIRouter()


@router.post("/v1/estimates", response_model=PreflightOut, tags=["jobs"], responses=errors(401, 422))
def preflight_estimate(body: PreflightIn, owner: Owner, db: DB, svc: Svc) -> dict:
    """Peak accelerator memory per process (its parts: parameters, gradients, optimizer, reference, activations,
    loss chunk) and seconds per step and for the job, for ``spec`` on ``device``, and which live workers it fits.
    The spec is checked as POST /v1/jobs checks it (a 422 names the field), its fit to the live workers aside:
    that is the answer. An unknown ``device`` is a 422 listing the known ones."""
    try:
        spec = JobSpec.model_validate(body.spec)
    except ValidationError as err:
        lines = format_validation_error(err).splitlines()
        raise HTTPException(422, "\n".join(f"spec.{line}" for line in lines)) from None
    lineage = continued_from(db, owner, spec, svc.settings)  # a base_model job:<id>@... has its base's shape
    problems = submit_problems(db, owner, spec, svc.settings, lineage, memory=False)
    if problems:
        raise HTTPException(422, "\n".join(problems))
    workers = live_workers(db, svc.settings)
    try:
        shape = shape_for(spec, models_for(spec, svc.settings, lineage))
        if shape is None:
            raise EstimateError(f"spec.base_model: unknown model '{spec.base_model}'")
        return preflight(spec, shape, body.device, workers, svc.settings.estimate_memory_margin)
    except (EstimateError, UnknownDevice) as err:
        raise HTTPException(422, str(err)) from None
