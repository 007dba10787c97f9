"""The checks a job spec passes before it is stored, as POST /v1/jobs and POST /v1/sweeps make them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mol_engine.spec import JobSpec
from store.db import Dataset
from store.models import available_models
from store.quotas import SETTING_OF, limits_for
from store.settings import Settings

from ..checks.job_references import check_references, demo_problem
from ..checks.job_resources import largest_nproc, nproc_problem, shape_problems


def submit_problems(db: Session, owner: str, spec: JobSpec, settings: Settings) -> list[str]:
    """Why ``spec`` cannot run for ``owner`` (a dataset not theirs or of the wrong purpose, an unknown model, a
    seq_len beyond the model's context or a micro-batch too large, more processes than any worker has, a priority
    above the owner's highest), one line each: what POST /v1/jobs and POST /v1/sweeps check."""
    owned = {d.id: d for d in db.scalars(select(Dataset).where(Dataset.owner == owner))}
    models = available_models(settings)
    problems = check_references(spec, owned, models) + demo_problem(spec, settings)
    problems += shape_problems(spec, models, settings.max_microbatch_tokens)
    return problems + nproc_problem(spec.nproc, largest_nproc(db, settings)) + priority_problem(spec, owner, settings)


def priority_problem(spec: JobSpec, owner: str, settings: Settings) -> list[str]:
    """The line saying ``spec.priority`` is above the highest ``owner`` may ask for, if it is."""
    highest = limits_for(settings, owner).max_priority
    if spec.priority <= highest:
        return []
    return [f"priority: {spec.priority} is above the highest priority you may ask for, {highest} "
            f"({SETTING_OF['max_priority']}, or MOL_OWNER_LIMITS for you)"]
