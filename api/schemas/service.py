"""The service itself: its health, the workers seen, and the caller's session."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .common import UtcDatetime


class WorkerOut(BaseModel):
    name: str
    last_seen: UtcDatetime


class HealthOut(BaseModel):
    """``status`` is ``degraded`` when the database or the broker fails, or jobs wait with no worker alive. The
    other fields only for a request with a valid token."""

    model_config = ConfigDict(extra="allow")
    status: str
    reasons: list[str] = []
    database: str | None = None
    broker: str | None = None
    workers: list[WorkerOut] | str | None = None  # a string says why the workers could not be read
    jobs_waiting: int | None = None


class SessionOut(BaseModel):
    owner: str


class WorkerStatusOut(BaseModel):
    """A worker as GET /v1/workers shows it: alive when its heartbeat is within ``MOL_LEASE_TIMEOUT_S``. The job
    it runs is named only to that job's owner; to others it is ``busy``."""

    name: str  # host:pid
    alive: bool
    device: str | None  # "cpu (8 cores)", "cuda: 2 x NVIDIA H100 (GPUs 0,1)"; null until its first heartbeat says
    capacity: int  # processes (GPUs) it gives one job
    memory_mib: int | None = None  # what one job process has: its GPU's memory, or the host's RAM; null: not said
    last_seen: UtcDatetime
    busy: bool
    job_id: str | None
    job_name: str | None


class WorkerList(BaseModel):
    object: str = "list"
    data: list[WorkerStatusOut]  # alive first, then by last heartbeat, newest first
    alive_within_s: float  # MOL_LEASE_TIMEOUT_S
