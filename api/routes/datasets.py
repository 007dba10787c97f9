"""POST/GET/DELETE /v1/datasets: uploads streamed to the dataset store, validated before they are kept."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from mol_engine.data import DataError, DocumentReader, iter_qa
from mol_engine.token_store import cache_root
from store.db import Dataset, Job
from store.jobs import UNFINISHED

from ..checks.job_references import dataset_refs
from ..checks.names import name_problem
from ..dataset_store import EXISTING_HEADER, keep_dataset, owns_file
from ..deps import DB, OwnedDataset, Owner, StreamOwner, Svc
from ..schemas.common import DATASET_FORM, errors
from ..schemas.datasets import DatasetOut, DatasetPreview, PreviewDocument
from ..services.datasets import mark_existing
from ..services.quotas import check_upload_quota
from ..upload import BadUpload, DiskFull, UploadTooLarge, receive_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=errors(401, 422))
PREVIEW_CHARS = 4000  # of each document a preview shows
PreviewCount = Annotated[int, Query(ge=1, le=50, description="how many documents, from the first")]


EXISTING = {200: {"model": DatasetOut, "headers": {EXISTING_HEADER: {"schema": {"type": "string"}, "description":
              "the id of the dataset returned"}}, "description": "the owner's dataset of the same file and purpose, "
              "stored before (the same sha256): no copy is kept"}}


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra=DATASET_FORM,
             responses=EXISTING | errors(403, 413, 429, 507))
async def upload_dataset(request: Request, owner: StreamOwner, svc: Svc, response: Response) -> Dataset:
    declared = request.headers.get("content-length", "")
    await run_in_threadpool(check_upload_quota, svc.sessions, owner, svc.settings,
                            int(declared) if declared.isdigit() else 0)  # 429 past the storage quota
    try:
        upload = await receive_upload(request, svc.settings.datasets_dir, svc.settings.max_upload_bytes)
    except UploadTooLarge:
        raise HTTPException(413, f"file: larger than the limit of {svc.settings.max_upload_mb:g} MiB") from None
    except BadUpload as err:
        raise HTTPException(422, str(err)) from None
    except DiskFull:
        raise HTTPException(507, "file: the server's disk is full; free space and send it again") from None
    purpose = upload.fields.get("purpose", "")
    try:
        if problem := name_problem(purpose, upload.filename):  # before the database sees any of it
            raise HTTPException(422, problem)
        final = upload.path.with_name(upload.path.name.removeprefix(".").removesuffix(".part"))
        os.replace(upload.path, final)
        upload.path = final
        dataset, new = await keep_dataset(svc.sessions, owner, purpose, upload, svc.settings.max_bad_lines)
    except BaseException:  # whatever failed, the received bytes go (keep_dataset removes them too)
        upload.path.unlink(missing_ok=True)
        raise
    if not new:
        mark_existing(response, dataset)
    return dataset


@router.get("", response_model=list[DatasetOut])
def list_datasets(owner: Owner, db: DB) -> list[Dataset]:
    return list(db.scalars(select(Dataset).where(Dataset.owner == owner).order_by(Dataset.created_at.desc())))


@router.get("/{dataset_id}", response_model=DatasetOut, responses=errors(404))
def get_dataset(dataset_id: str, dataset: OwnedDataset) -> Dataset:
    return dataset


@router.get("/{dataset_id}/preview", response_model=DatasetPreview, responses=errors(404, 409))
def preview_dataset(dataset_id: str, dataset: OwnedDataset, db: DB, n: PreviewCount = 5) -> DatasetPreview:
    """The dataset's stats and its first ``n`` documents, each cut to PREVIEW_CHARS; read as a stream, so memory
    stays bounded by one document whatever the file's size."""
    db.close()
    try:
        texts = list(islice(documents_of(Path(dataset.path), dataset.purpose), n))
    except DataError as err:  # the file changed or vanished since it was checked
        raise HTTPException(409, f"dataset '{dataset_id}': {str(err).replace(dataset.path, dataset.filename)}") \
            from None
    return DatasetPreview(dataset=DatasetOut.model_validate(dataset),
                          documents=[PreviewDocument(text=t[:PREVIEW_CHARS], chars=len(t)) for t in texts])


def documents_of(path: Path, purpose: str) -> Iterator[str]:
    """The file's documents in order as a preview shows them, read lazily: a question/answer pair as one."""
    if purpose == "eval":
        return (f"{pair.question}\n\n{pair.answer}" for pair in iter_qa(path))
    if purpose == "prompts":
        from mol_engine.samples import read_prompts

        return iter(read_prompts(path))  # at most MAX_SAMPLE_PROMPTS short rows
    if purpose == "task":
        from mol_engine.task_eval import check_task_file, record_text

        return (record_text(r) for r in check_task_file(path).records)
    return iter(DocumentReader(path))


@router.delete("/{dataset_id}", status_code=204, responses=errors(403, 404, 409))
def delete_dataset(dataset_id: str, dataset: OwnedDataset, owner: Owner, db: DB, svc: Svc) -> None:
    """Deletes the dataset, and its file and token stores when the store made them (not the demo's own)."""
    active = db.scalars(select(Job).where(Job.owner == owner, Job.status.in_(UNFINISHED))).all()
    users = [job.id for job in active if dataset_id in dataset_refs(job.spec)]
    if users:
        raise HTTPException(409, f"dataset '{dataset_id}' is used by active job(s) {', '.join(users)}")
    db.delete(dataset)
    db.commit()
    if not owns_file(svc.settings, dataset):
        return
    Path(dataset.path).unlink(missing_ok=True)
    shutil.rmtree(cache_root(dataset.path), ignore_errors=True)  # cached reference targets built on it
