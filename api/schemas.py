"""Request and response bodies of the REST API (JobSpec, the job request, lives in mol_engine.spec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TokenStoreOut(BaseModel):
    """One tokenization of a dataset: made by the first job that used it with this tokenizer."""

    tokenizer: str
    tokens: int
    documents: int
    dtype: str
    vocab_size: int
    bytes: int


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
    token_stores: list[TokenStoreOut] = []


class UploadIn(BaseModel):
    filename: str = Field(min_length=1, max_length=255)
    purpose: str
    bytes: int = Field(ge=0, description="the whole file's size; the parts must add up to it")
    mime_type: str | None = Field(None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")  # no NUL: PostgreSQL refuses it


class CompleteIn(BaseModel):
    part_count: int | None = Field(None, ge=1, description="parts 0..part_count-1 (default: as many as received)")
    sha256: str | None = Field(None, pattern="^[0-9a-fA-F]{64}$", description="expected hash of the whole file")


class PartOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    index: int
    bytes: int
    sha256: str


class UploadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    status: str
    filename: str
    purpose: str
    bytes: int
    mime_type: str | None
    received_bytes: int
    parts: list[PartOut]
    dataset_id: str | None
    created_at: datetime
    expires_at: datetime


class JobSummary(BaseModel):
    """A job as lists show it: its state, without the spec (``base_model`` and ``method`` only)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    status: str
    base_model: str | None
    method: str | None
    step: int
    max_steps: int
    progress: float
    last_metrics: dict[str, Any]
    error: str | None
    cancel_requested: bool
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobOut(JobSummary):
    spec: dict[str, Any]
    disk_bytes: int | None = None  # the run directory's size, measured by GET /v1/jobs/{id}


class JobPage(BaseModel):
    """One page of ``GET /v1/jobs``, in the OpenAI list shape: pass ``last_id`` as ``after`` for the next."""

    object: str = "list"
    data: list[JobSummary]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ModelOut(BaseModel):
    id: str  # the name a job spec's base_model takes; the server's path stays private
    model_type: str | None = None


class CheckpointOut(BaseModel):
    name: str
    step: int
    kind: str  # "full" or "adapter"
    bytes: int
