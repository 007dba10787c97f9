"""Usage: an owner's figures by UTC day, their storage, and their limits with today's use against them
(GET /v1/usage), and a job's totals (in GET /v1/jobs/{id})."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field


class JobUsageOut(BaseModel):
    """What one job used, over all its attempts: tokens of the steps it completed (each once, however often a
    resume redid it), accelerator-seconds (processes x seconds its runners held the lease, redone steps included),
    and its run directory as its runner last measured it."""

    tokens: int
    accelerator_seconds: float
    storage_bytes: int


class UsageDayOut(BaseModel):
    day: date  # UTC
    tokens: int
    accelerator_seconds: float
    accelerator_hours: float
    jobs: int = Field(description="the owner's jobs that ran (held a lease) or completed steps that day")


class StorageOut(BaseModel):
    datasets_bytes: int
    runs_bytes: int  # the jobs' run directories, as their runners last measured them
    total_bytes: int


class LimitsOut(BaseModel):
    """The owner's limits (MOL_OWNER_* settings, or their MOL_OWNER_LIMITS entry) and today's use against them."""

    gpu_hours_per_day: float
    storage_gb: float  # GB of 10^9 bytes
    today: date  # UTC
    accelerator_hours_today: float
    storage_gb_used: float


class UsageOut(BaseModel):
    """``GET /v1/usage``: the days of the range on which the owner used anything (oldest first), their totals, the
    storage held now, and the limits."""

    owner: str
    from_day: date
    to_day: date
    days: list[UsageDayOut]
    tokens: int
    accelerator_seconds: float
    accelerator_hours: float
    storage: StorageOut
    limits: LimitsOut
