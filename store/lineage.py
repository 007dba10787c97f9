"""Continuing from a checkpoint: a job's ``base_model`` (or ``reference_model``) may name a kept checkpoint of one
of its owner's jobs, ``job:<id>@best``, ``job:<id>@final`` or ``job:<id>@step-N``.

The API resolves such a reference at submit (:func:`resolve_parent`: the job is the owner's, the checkpoint is
there and complete) and records the job's lineage (:class:`Lineage`: parent job, the parent's checkpoint as a
``step-N`` name, the original base model of the whole chain). The worker turns the lineage into a model directory
when the job starts (:func:`start_model`): the parent's checkpoint exported into the new job's run directory,
a LoRA adapter merged into its base, FSDP shards gathered (mol_engine.export, as downloads do). The new job keeps
that copy, so it resumes without its parent, and the parent may prune or be deleted once it has started.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mol_engine.budget import read_best
from mol_engine.run_dir import BEST_NAME, STATE_FILE, STEP_NAME_PATTERN, is_step_name, step_name, step_of

from .db import Job, is_id
from .settings import Settings

PREFIX = "job:"
FINAL_NAME = "final"  # the last checkpoint of a job that succeeded
CHECKPOINT_REF = re.compile(rf"job:([A-Za-z0-9_-]{{1,40}})@({BEST_NAME}|{FINAL_NAME}|{STEP_NAME_PATTERN})")
START_DIR = "start-model"  # in a continued job's run directory: the parent's checkpoint as a model directory
REFERENCE_DIR = "reference-model"  # the same for a reference_model naming a checkpoint
REF_HELP = "job:<job id>@best, job:<job id>@final or job:<job id>@step-N"


@dataclass(frozen=True)
class CheckpointRef:
    """``job:<job_id>@<checkpoint>`` as written: ``checkpoint`` is ``best``, ``final`` or ``step-N``."""

    job_id: str
    checkpoint: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.job_id}@{self.checkpoint}"


@dataclass(frozen=True)
class Lineage:
    """Where a continued job starts: its parent job, the parent's checkpoint (``step-N``), and the base model id
    the first job of the chain trained from (the default reference of the KL)."""

    parent_job_id: str
    parent_checkpoint: str
    original_base_model: str


class ParentNotFound(LookupError):
    """The reference names no job of this owner (unknown, deleted, or another owner's: the same answer)."""


class CheckpointUnavailable(ValueError):
    """The job exists but the checkpoint named is not there, or not complete (the message names it)."""


def is_checkpoint_ref(value: str | None) -> bool:
    """Whether ``value`` is meant as a checkpoint reference (starts with ``job:``), well formed or not."""
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_ref(value: str) -> CheckpointRef:
    """The reference ``value`` spells; ValueError saying the syntax when it is malformed."""
    match = CHECKPOINT_REF.fullmatch(value)
    if match is None:
        raise ValueError(f"'{value}' is not a checkpoint reference: write {REF_HELP}")
    return CheckpointRef(match[1], match[2])


def owned_parent(db: Session, owner: str, ref: CheckpointRef) -> Job:
    """The job ``ref`` names when it is ``owner``'s; ParentNotFound otherwise."""
    job = db.get(Job, ref.job_id) if is_id(ref.job_id) else None
    if job is None or job.owner != owner:
        raise ParentNotFound(f"{ref}: job '{ref.job_id}' not found")
    return job


def checkpoint_name(settings: Settings, job: Job, ref: CheckpointRef) -> str:
    """The ``step-N`` that ``ref`` names now among ``job``'s complete checkpoints; CheckpointUnavailable saying why
    when there is none (no best yet, not succeeded for ``final``, pruned, incomplete)."""
    run = settings.run_dir(job.id)
    if ref.checkpoint == BEST_NAME:
        step = read_best(run.path)
        if step is None:
            raise CheckpointUnavailable(f"{ref}: job '{job.id}' has no best checkpoint (yet)")
        name = step_name(step)
    elif ref.checkpoint == FINAL_NAME:
        if job.status != "succeeded":
            raise CheckpointUnavailable(f"{ref}: job '{job.id}' is {job.status}; only a job that succeeded has a "
                                        "final checkpoint (name one of its step-N checkpoints instead)")
        kept = run.checkpoint_dirs()
        if not kept:
            raise CheckpointUnavailable(f"{ref}: job '{job.id}' has no checkpoint left")
        name = kept[-1].name
    else:
        name = step_name(step_of(ref.checkpoint))  # step-007 is step-7
    checkpoint_dir(settings, job.id, name, str(ref))
    return name


def checkpoint_dir(settings: Settings, job_id: str, name: str, said: str | None = None) -> Path:
    """The directory of ``job_id``'s complete checkpoint ``name`` (``step-N``); CheckpointUnavailable naming it
    (as ``said``, the reference the user wrote, when given) when it is gone or incomplete."""
    said = said or f"{PREFIX}{job_id}@{name}"
    path = settings.run_dir(job_id).checkpoint(name) if is_step_name(name) else None
    if path is None or not path.is_dir():
        raise CheckpointUnavailable(f"{said}: checkpoint {name} of job '{job_id}' no longer exists (deleted, or "
                                    "pruned by keep_checkpoints)")
    if not (path / STATE_FILE).is_file():
        raise CheckpointUnavailable(f"{said}: checkpoint {name} of job '{job_id}' is incomplete")
    return path


def resolve_parent(db: Session, settings: Settings, owner: str, ref: CheckpointRef) -> Lineage:
    """The lineage of a job of ``owner`` continuing from ``ref``: ParentNotFound or CheckpointUnavailable when it
    cannot. The original base follows the parent's own lineage back to the first job of the chain."""
    parent = owned_parent(db, owner, ref)
    name = checkpoint_name(settings, parent, ref)
    return Lineage(parent.id, name, parent.original_base_model or parent.spec["base_model"])


def lineage_of(job: Job) -> Lineage | None:
    """A job's recorded lineage; None for a job that started from a base model."""
    if not job.parent_job_id:
        return None
    return Lineage(job.parent_job_id, job.parent_checkpoint, job.original_base_model)


def exported_model(checkpoint: Path, dest: Path) -> Path:
    """``checkpoint`` as a model directory at ``dest``, made once (a LoRA adapter merged into its base, FSDP shards
    gathered; written whole, so a directory found there is complete) and reused by every later attempt."""
    if (dest / "config.json").is_file():
        return dest
    from mol_engine.export import export_checkpoint  # torch, for a merge or a gather

    return export_checkpoint(checkpoint, dest, merged=True)


def start_model(settings: Settings, job: Job) -> Path:
    """The model directory a continued job trains from (its copy of the parent's checkpoint, made on first use);
    CheckpointUnavailable naming the checkpoint when it is gone before the copy was made."""
    dest = settings.run_dir(job.id).path / START_DIR
    if (dest / "config.json").is_file():
        return dest
    source = checkpoint_dir(settings, job.parent_job_id, job.parent_checkpoint, job.spec["base_model"])
    return exported_model(source, dest)


def reference_checkpoint(db: Session, settings: Settings, job: Job, ref: CheckpointRef) -> Path:
    """The model directory of a ``reference_model`` that names a checkpoint (copied into the job's run directory
    on first use, as :func:`start_model`)."""
    dest = settings.run_dir(job.id).path / REFERENCE_DIR
    if (dest / "config.json").is_file():
        return dest
    parent = owned_parent(db, job.owner, ref)
    return exported_model(checkpoint_dir(settings, parent.id, checkpoint_name(settings, parent, ref), str(ref)), dest)


def trained_from(settings: Settings, job_id: str, base_model: str | None, models: dict[str, Path]) -> Path | None:
    """The model directory job ``job_id`` trained from (its spec's ``base_model``): a model of ``models``, or for
    a continued job its copy of the parent's checkpoint once made; None when there is none (a LoRA checkpoint of
    the job loads on it, and a task evaluation's ``base`` is it)."""
    if not is_checkpoint_ref(base_model):
        return models.get(base_model)
    copy = settings.run_dir(job_id).path / START_DIR
    return copy if (copy / "config.json").is_file() else None


def children_in_flight(db: Session, job_id: str) -> list[tuple[str, str]]:
    """(id, status) of the unfinished (queued, running or paused) jobs that continue from a checkpoint of
    ``job_id``: a paused one may not have copied it yet."""
    rows = db.execute(select(Job.id, Job.status).where(Job.parent_job_id == job_id,
                                                       Job.status.in_(("queued", "running", "paused"))))
    return [(row.id, row.status) for row in rows]
