"""The models the completions routes serve, in OpenAI's model shape: the base models on offer and the owner's
checkpoints, ``<job_id>:step-N`` or ``<job_id>:best``."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException

from mol_engine.budget import best_checkpoint_dir
from mol_engine.generate import ModelSource
from mol_engine.run_dir import BEST_NAME, step_of
from store.db import Job, is_id
from store.lineage import trained_from
from store.models import available_models, model_type

from ..schemas.models import ModelOut
from .checkpoints import find_job_checkpoint


def resolve_model(svc, owner: str, model_id: str) -> ModelSource:
    """What ``model_id`` names for ``owner``: a base model, or a checkpoint of one of the owner's jobs (with the
    job's base model, which a LoRA adapter loads on); 404 for anything else, another owner's checkpoint included."""
    models = available_models(svc.settings)
    if model_id in models:
        return ModelSource(models[model_id])
    job_id, _, name = model_id.partition(":")
    with svc.sessions() as db:
        job = db.get(Job, job_id) if is_id(job_id) else None
        owned = job is not None and job.owner == owner
        base_id = job.spec.get("base_model") if owned else None
    path = find_job_checkpoint(svc.settings, job_id, name) if owned else None
    if path is None:
        raise HTTPException(404, f"model: '{model_id}' not found: a base model id (GET /v1/models) or a checkpoint "
                                 f"id '<job_id>:step-N' of one of your jobs")
    return ModelSource(path, trained_from(svc.settings, job_id, base_id, models))


def checkpoint_models(svc, owner: str) -> list[ModelOut]:
    """The owner's checkpoints as completion models, ``<job_id>:<name>``, newest first (by job, then by step), each
    job's ``best`` (when it has one) before its steps; each names its job (``job_name``) for people to pick by."""
    with svc.sessions() as db:
        jobs = db.query(Job.id, Job.name, Job.spec).filter(Job.owner == owner).order_by(Job.created_at.desc()).all()
    models = available_models(svc.settings)
    listed = []
    for job_id, job_name, spec in jobs:
        base, run = trained_from(svc.settings, job_id, spec.get("base_model"), models), svc.settings.run_dir(job_id)
        best = best_checkpoint_dir(run.path)
        named = ([(BEST_NAME, best)] if best else []) + [(p.name, p) for p in reversed(run.checkpoint_dirs())]
        listed += [checkpoint_model(f"{job_id}:{name}", path, base, owner, job_name) for name, path in named]
    return listed


def checkpoint_model(model_id: str, path: Path, base: Path | None, owner: str,
                     job_name: str | None = None) -> ModelOut:
    """The model object of checkpoint ``path`` (of the job ``job_name`` on ``base``, None when that is gone) listed
    as ``model_id`` (``<job_id>:best`` or ``<job_id>:step-N``)."""
    return ModelOut(id=model_id, created=mtime_s(path), owned_by=owner,
                    model_type=model_type(base) if base is not None else None, kind="checkpoint", job_name=job_name,
                    checkpoint=model_id.rsplit(":", 1)[-1], step=step_of(path))


def mtime_s(path: Path) -> int:
    """When ``path`` was last written, in Unix seconds (0 when it cannot be read)."""
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0


def base_model(name: str, path: Path) -> ModelOut:
    """The model object of the base model ``name`` in directory ``path``."""
    return ModelOut(id=name, created=mtime_s(path / "config.json"), model_type=model_type(path))
