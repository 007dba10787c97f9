"""The checks a job spec passes before it is stored, as POST /v1/jobs and POST /v1/sweeps make them."""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from mol_engine.spec import JobSpec
from store.db import Dataset
from store.lineage import CheckpointUnavailable, Lineage, ParentNotFound, is_checkpoint_ref, parse_ref, resolve_parent
from store.models import available_models, vocab_size
from store.quotas import SETTING_OF, limits_for
from store.settings import Settings

from ..checks.job_memory import memory_problems
from ..checks.job_references import check_references, demo_problem
from ..checks.job_resources import largest_nproc, nproc_problem, shape_problems

CHECKPOINT_FIELDS = ("base_model", "reference_model")  # the spec fields that may name a checkpoint of a job


def continued_from(db: Session, owner: str, spec: JobSpec, settings: Settings) -> Lineage | None:
    """The lineage of a job of ``owner`` whose ``base_model`` names a checkpoint (None when it names a model), after
    checking every checkpoint the spec names: 422 for a malformed reference, 404 for a job that is not the owner's
    (the answer for an unknown job: no other owner's job is revealed), 409 for a checkpoint gone or incomplete."""
    found = None
    for field in CHECKPOINT_FIELDS:
        value = getattr(spec, field)
        if not is_checkpoint_ref(value):
            continue
        try:
            ref = parse_ref(value)
        except ValueError as err:
            raise HTTPException(422, f"{field}: {err}") from None
        try:
            lineage = resolve_parent(db, settings, owner, ref)
        except ParentNotFound:
            raise HTTPException(404, f"job '{ref.job_id}' not found") from None
        except CheckpointUnavailable as err:
            raise HTTPException(409, f"{field}: {err}") from None
        found = lineage if field == "base_model" else found
    return found


def submit_problems(db: Session, owner: str, spec: JobSpec, settings: Settings, lineage: Lineage | None = None,
                    memory: bool = True) -> list[str]:
    """Why ``spec`` cannot run for ``owner`` (a dataset not theirs or of the wrong purpose, an unknown model, a
    seq_len beyond the model's context or a micro-batch too large, more processes than any worker has, a priority
    above the owner's highest, and with ``memory`` a peak that fits no live worker's memory), one line each: what
    POST /v1/jobs and POST /v1/sweeps check (POST /v1/estimates all but the memory, which it reports). A job
    continuing from a checkpoint (``lineage``) is checked against its original base model, which must still be
    offered (it is the default KL anchor)."""
    owned = {d.id: d for d in db.scalars(select(Dataset).where(Dataset.owner == owner))}
    problems = lineage_problems(spec, available_models(settings), lineage)
    models = models_for(spec, settings, lineage)
    problems += check_references(spec, owned, models) + demo_problem(spec, settings)
    problems += shape_problems(spec, models, settings.max_microbatch_tokens)
    problems += nproc_problem(spec.nproc, largest_nproc(db, settings)) + priority_problem(spec, owner, settings)
    return problems + (memory_problems(db, spec, models, settings) if memory and not problems else [])


def models_for(spec: JobSpec, settings: Settings, lineage: Lineage | None) -> dict:
    """The models offered, id -> directory; for a job continuing from a checkpoint (``lineage``) its ``base_model``
    (``job:<id>@...``) too, as its original base model: the checkpoint has that model's shape."""
    models = available_models(settings)
    if lineage and lineage.original_base_model in models:
        models = models | {spec.base_model: models[lineage.original_base_model]}
    return models


def lineage_problems(spec: JobSpec, models: dict, lineage: Lineage | None) -> list[str]:
    """A continued job whose original base model this server no longer offers; a ``reference_model`` id that is
    neither a model here nor a checkpoint, or a model of another vocabulary than the base's."""
    problems = []
    if lineage and lineage.original_base_model not in models:
        problems.append(f"base_model: '{spec.base_model}' was trained from '{lineage.original_base_model}', which "
                        "this server no longer offers (the KL anchors to it, and a LoRA checkpoint merges into it)")
    if spec.reference_model and not is_checkpoint_ref(spec.reference_model) and spec.reference_model not in models:
        problems.append(f"reference_model: unknown model '{spec.reference_model}' (see GET /v1/models, or name a "
                        "checkpoint: job:<id>@best)")
    base, anchor = models.get(lineage.original_base_model if lineage else spec.base_model), \
        models.get(spec.reference_model)
    if base and anchor and vocab_size(base) != vocab_size(anchor):
        problems.append(f"reference_model: '{spec.reference_model}' has a vocabulary of {vocab_size(anchor)} tokens, "
                        f"the base {vocab_size(base)}: the KL compares next-token distributions, so the two need "
                        "the same tokenizer")
    return problems


def priority_problem(spec: JobSpec, owner: str, settings: Settings) -> list[str]:
    """The line saying ``spec.priority`` is above the highest ``owner`` may ask for, if it is."""
    highest = limits_for(settings, owner).max_priority
    if spec.priority <= highest:
        return []
    return [f"priority: {spec.priority} is above the highest priority you may ask for, {highest} "
            f"({SETTING_OF['max_priority']}, or MOL_OWNER_LIMITS for you)"]
