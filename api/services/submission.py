"""The checks a job spec passes before it is stored, as POST /v1/jobs and POST /v1/sweeps make them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from mol_engine.spec import JobSpec
from store.db import Dataset
from store.models import available_models
from store.settings import Settings

from ..checks.job_memory import memory_problems
from ..checks.job_references import check_references, demo_problem
from ..checks.job_resources import largest_nproc, nproc_problem, shape_problems


def submit_problems(db: Session, owner: str, spec: JobSpec, settings: Settings, memory: bool = True) -> list[str]:
    """Why ``spec`` cannot run for ``owner`` (a dataset not theirs or of the wrong purpose, an unknown model, a
    seq_len beyond the model's context or a micro-batch too large, more processes than any worker has, and with
    ``memory`` a peak that fits no live worker's memory), one line each: what POST /v1/jobs and POST /v1/sweeps
    check (POST /v1/estimates all but the memory, which it reports)."""
    owned = {d.id: d for d in db.scalars(select(Dataset).where(Dataset.owner == owner))}
    models = available_models(settings)
    problems = check_references(spec, owned, models) + demo_problem(spec, settings)
    problems += shape_problems(spec, models, settings.max_microbatch_tokens)
    problems += nproc_problem(spec.nproc, largest_nproc(db, settings))
    return problems + (memory_problems(db, spec, models, settings) if memory and not problems else [])
