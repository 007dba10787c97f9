"""A job's checkpoints as the API names them: ``step-N`` or the alias ``best``, found in its run directory and
listed with what a download of each carries."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException

from mol_engine.budget import read_best
from mol_engine.export import is_adapter, tied_aliases
from mol_engine.run_dir import BEST_NAME, RunDir, is_sharded_checkpoint, step_name, step_of
from store.settings import Settings
from store.usage import tree_bytes

from ..schemas.jobs import CheckpointOut


def resolve_checkpoint_name(run_dir: Path, name: str) -> str:
    """``name`` with the alias ``best`` replaced by the checkpoint ``best.json`` names; 409 when there is none."""
    if name != BEST_NAME:
        return name
    step = read_best(run_dir)
    if step is None:
        raise HTTPException(409, "checkpoint 'best': this job has no best checkpoint yet (the best is chosen among "
                                 "checkpoints evaluated at their step within max_general_kl; none is so far)")
    return step_name(step)


def find_job_checkpoint(settings: Settings, job_id: str, name: str) -> Path | None:
    """The directory of the job's checkpoint called ``name`` (``step-N``, or ``best`` as the download route takes
    it: 409 while the job has none), or None when there is none."""
    run = settings.run_dir(job_id)
    name = resolve_checkpoint_name(run.path, name)
    return next((p for p in run.checkpoint_dirs() if p.name == name), None)


def checkpoints_listed(run: RunDir) -> list[CheckpointOut]:
    """The run's checkpoints, oldest first, each with its step, whether it is the best, its kind and the bytes a
    download of it carries."""
    best = read_best(run.path)
    return [CheckpointOut(name=p.name, step=(step := step_of(p)), best=step == best,
                          kind="adapter" if is_adapter(p) else "full", bytes=download_bytes(p))
            for p in run.checkpoint_dirs()]


def download_bytes(checkpoint: Path) -> int:
    """The bytes of the model a download of ``checkpoint`` carries: its ``model/`` directory, and under FSDP the
    weights in its shards (not the optimizer state or RNG beside them; a tied head once)."""
    if not is_sharded_checkpoint(checkpoint):
        return tree_bytes(checkpoint / "model")
    from mol_engine.checkpoint import sharded_weight_bytes  # reading the shards' index needs torch

    return tree_bytes(checkpoint / "model") + sharded_weight_bytes(checkpoint, tied_aliases(checkpoint / "model"))
