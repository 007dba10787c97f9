"""GET /v1/jobspec: the JSON schema of a job spec, which the dashboard builds its New job form from."""

from __future__ import annotations

from fastapi import APIRouter

from mol_engine.spec import JobSpec

from ..deps import Owner
from ..schemas.common import errors

router = APIRouter()


@router.get("/v1/jobspec", tags=["jobs"], responses=errors(401))
def job_spec_schema(owner: Owner) -> dict:
    """The JSON schema of a job spec, with every default: the dashboard builds its form from it."""
    return JobSpec.model_json_schema()
