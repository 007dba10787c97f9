"""Datasets: a stored upload, its preview, and the uploads in parts that make one."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..upload_parts import MAX_PARTS
from .common import UtcDatetime


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
    created_at: UtcDatetime
    token_stores: list[TokenStoreOut] = []


class UploadIn(BaseModel):
    filename: str = Field(min_length=1, max_length=255)
    purpose: str
    bytes: int = Field(ge=0, description="the whole file's size; the parts must add up to it")
    mime_type: str | None = Field(None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")  # no NUL: PostgreSQL refuses it


class CompleteIn(BaseModel):
    part_count: int | None = Field(None, ge=1, le=MAX_PARTS,
                                   description="parts 0..part_count-1 (default: as many as received)")
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
    created_at: UtcDatetime
    expires_at: UtcDatetime


class PreviewDocument(BaseModel):
    text: str  # cut to the first few KB; for eval files "question\n\nanswer"
    chars: int  # the whole document's length: more than len(text) when it was cut


class DatasetPreview(BaseModel):
    """``GET /v1/datasets/{id}/preview``: the dataset's stats and its first documents, in file order."""

    dataset: DatasetOut
    documents: list[PreviewDocument]
