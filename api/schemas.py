"""Response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    purpose: str
    filename: str
    bytes: int
    documents: int
    approx_tokens: int
    sha256: str
    created_at: datetime


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    status: str
    step: int
    max_steps: int
    progress: float
    spec: dict[str, Any]
    last_metrics: dict[str, Any]
    error: str | None
    cancel_requested: bool
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ModelOut(BaseModel):
    id: str
    path: str
    model_type: str | None = None


class CheckpointOut(BaseModel):
    name: str
    step: int
    kind: str  # "full" or "adapter"
    bytes: int
