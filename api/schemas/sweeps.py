"""Sweeps: a base spec and a grid made into jobs, and the sweep's ranked jobs and frontier."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from mol_engine.sweep import GRID_KEYS

from .common import UtcDatetime

MAX_GRID_VALUES = 256  # of one grid key; MOL_MAX_SWEEP_JOBS caps the product


MAX_GRID_TEXT = 64  # characters of one grid value given as text ("4:1", "mol")


GridValue = Annotated[str, Field(max_length=MAX_GRID_TEXT)] | int | float


class SweepIn(BaseModel):
    """A sweep: the base job spec (as POST /v1/jobs takes it) and a grid of values to vary; one job per point."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=150, description="default: the base spec's name")
    base: dict[str, Any] = Field(description="a job spec (JobSpec), shared by every job of the sweep")
    grid: dict[str, Annotated[list[GridValue], Field(max_length=MAX_GRID_VALUES)]] = Field(
        max_length=len(GRID_KEYS), description="spec field -> values: ratio, kl_weight, lr and method may vary",
        examples=[{"ratio": ["4:1", "1:1", "1:2"], "kl_weight": [0.5, 1]}])


class SweepJobOut(BaseModel):
    """One job of a sweep: its grid point, state and place on the trade-off (mol_engine/sweep.py result_point)."""

    id: str
    name: str
    status: str
    step: int
    max_steps: int
    values: dict[str, Any]  # its grid point
    gain: float | None  # ln(base domain ppl / final domain ppl); null before it has evaluated after step 0
    drift: float | None  # KL to the base on held-out general text at that final evaluation (nats/token)
    on_frontier: bool


class SweepSummary(BaseModel):
    """A sweep as lists show it: the number of its jobs in each state."""

    id: str
    name: str
    grid: dict[str, list[Any]]
    created_at: UtcDatetime
    jobs: int
    statuses: dict[str, int]


class SweepOut(SweepSummary):
    """A sweep with its jobs (best domain gain first) and its Pareto frontier (ids, lowest drift first)."""

    base_spec: dict[str, Any]
    data: list[SweepJobOut]
    frontier: list[str]


class SweepList(BaseModel):
    object: str = "list"
    data: list[SweepSummary]
    has_more: bool


class SweepBoundsOut(BaseModel):
    """What a sweep's grid may hold on this server (GET /v1/sweeps/bounds): the grid editor's limits."""

    keys: list[str]  # the spec fields a grid may vary
    max_values: int  # values of one key
    max_jobs: int  # MOL_MAX_SWEEP_JOBS: the product of the lists' lengths
