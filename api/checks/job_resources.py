"""What a job spec asks of the workers: blocks that fit its model's context and a worker's micro-batch, and no more
processes than the largest worker runs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mol_engine.context import model_context, seq_len_problem
from mol_engine.spec import JobSpec
from store.db import WorkerSeen, utcnow
from store.settings import Settings


def shape_problems(spec: JobSpec, models: dict[str, Path], max_tokens: int) -> list[str]:
    """Problems with the blocks a spec trains on, each naming the fields: ``seq_len`` beyond its base model's
    context (the engine's rule, as ``mol train`` checks it), a micro-batch of more than ``max_tokens`` tokens."""
    problems = []
    if spec.base_model in models:
        problem = seq_len_problem(spec.seq_len, model_context(models[spec.base_model]), spec.base_model)
        problems += [problem] if problem else []
    tokens = spec.batch_size * spec.seq_len
    if tokens > max_tokens:
        problems.append(f"batch_size, seq_len: a micro-batch of {spec.batch_size} x {spec.seq_len} = {tokens} tokens "
                        f"is more than the {max_tokens} a worker accepts (MOL_MAX_MICROBATCH_TOKENS); lower "
                        "batch_size and raise grad_accum, or lower seq_len")
    return problems


def largest_nproc(db: Session, settings: Settings) -> int:
    """The most processes a job may ask for now: the capacity of the largest worker alive (seen within
    ``lease_timeout_s``, the bound after which its leases count as dead), or ``MOL_MAX_NPROC`` when larger
    (deployments whose large workers start on demand, after the jobs are submitted)."""
    since = utcnow() - timedelta(seconds=settings.lease_timeout_s)
    alive = db.scalar(select(func.max(WorkerSeen.capacity)).where(WorkerSeen.last_seen >= since))
    return max(alive or 1, settings.max_nproc)


def nproc_problem(nproc: int, largest: int) -> list[str]:
    """The problem with asking for ``nproc`` processes when the largest worker gives ``largest`` (none or one)."""
    if nproc <= largest:
        return []
    return [f"nproc: {nproc} processes asked, but the largest worker runs {largest}; ask for at most {largest}, or "
            f"start a worker with at least {nproc} GPUs (`mol worker --gpus ...`), or set MOL_MAX_NPROC"]
