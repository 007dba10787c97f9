"""A job's side tasks, run on a worker: interpolations with the base and task evaluations."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from mol_engine.interpolate import DEFAULT_ALPHAS, MAX_ALPHAS, check_alphas
from mol_engine.run_dir import BEST_NAME, STEP_NAME_PATTERN

from .common import UtcDatetime

MAX_EVALUATED_MODELS = 50  # of one task evaluation
BASE = "base"  # a task evaluation's name for the job's base model, beside its checkpoints' names


class InterpolationIn(BaseModel):
    """Which checkpoint to interpolate with the base, and at which α."""

    checkpoint: str = Field("best", pattern=rf"^({BEST_NAME}|{STEP_NAME_PATTERN})$", description="'step-N' or 'best'")
    alphas: list[float] = Field(list(DEFAULT_ALPHAS), min_length=1, max_length=MAX_ALPHAS,
                                description=f"θ(α) = (1−α)·base + α·checkpoint, each α in [0, 1], at most "
                                            f"{MAX_ALPHAS}")

    @field_validator("alphas")
    @classmethod
    def _within_0_1(cls, alphas: list[float]) -> list[float]:
        return check_alphas(alphas)  # the engine's rule: InterpolationError is a ValueError, so a 422


class InterpolationQueued(BaseModel):
    id: str = Field(description="the side task: the same request while it is pending or done answers it again")
    job_id: str
    checkpoint: str
    alphas: list[float]
    status: Literal["queued", "running", "done"] = "queued"


class InterpolationOut(BaseModel):
    """One interpolation of a job: its rows (``alpha``, ``domain_ppl``, ``general_kl``...) or why it failed."""

    checkpoint: str
    step: int
    alphas: list[float]
    rows: list[dict[str, float]] | None
    error: str | None
    created_at: UtcDatetime


class TaskEvaluationIn(BaseModel):
    """Which task to score, on which of the job's models."""

    task: str = Field(description="id of a dataset uploaded with purpose 'task'")
    checkpoints: list[Annotated[str, Field(pattern=rf"^({BASE}|{BEST_NAME}|{STEP_NAME_PATTERN})$")]] | None = Field(
        None, min_length=1, max_length=MAX_EVALUATED_MODELS,
        description="'base', 'best' or 'step-N' each; default every checkpoint the job keeps, and the base")


class TaskEvaluationQueued(BaseModel):
    id: str = Field(description="the side task: the same request while it is pending or done answers it again")
    job_id: str
    task: str
    checkpoints: list[str]
    status: Literal["queued", "running", "done"] = "queued"


class TaskEvaluationOut(BaseModel):
    """One task evaluation of a job: a row per model (``checkpoint``, ``acc``, ``acc_norm`` or ``exact_match``,
    ``n``, or its ``error``), or why it failed as a whole."""

    task: str
    filename: str | None
    kind: str | None
    checkpoints: list[str]
    rows: list[dict[str, Any]] | None
    error: str | None
    created_at: UtcDatetime


class SideTaskOut(BaseModel):
    """A side task of a job, as the POST that queued it answered (its ``id``), with where it stands now."""

    id: str
    kind: Literal["interpolation", "task-evaluation"] = Field(description="what the worker computes")
    status: Literal["queued", "running"]
    created_at: UtcDatetime
