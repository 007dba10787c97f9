"""POST/GET/DELETE /v1/datasets: uploads streamed to the dataset store, validated before they are kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from mol_engine.data import DataError
from mol_engine.reference_cache import cache_root

from ..db import Dataset, Job
from ..deps import DB, Owner, Svc
from ..schemas import DatasetOut
from ..upload import BadUpload, UploadTooLarge, receive_upload
from ..validation import ACTIVE, dataset_refs, inspect_dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=201, response_model=DatasetOut)
async def upload_dataset(request: Request, owner: Owner, db: DB, svc: Svc) -> Dataset:
    limit = svc.settings.max_upload_bytes
    directory = svc.settings.datasets_dir
    try:
        upload = await receive_upload(request, directory, limit)
    except UploadTooLarge:
        raise HTTPException(413, f"file: larger than the limit of {svc.settings.max_upload_mb:g} MiB") from None
    except BadUpload as err:
        raise HTTPException(422, str(err)) from None
    purpose = upload.fields.get("purpose", "")
    final = upload.path.with_name(upload.path.name.removeprefix(".").removesuffix(".part"))
    os.replace(upload.path, final)
    try:
        documents, tokens = await run_in_threadpool(inspect_dataset, final, purpose, upload.filename)
    except DataError as err:
        final.unlink(missing_ok=True)
        raise HTTPException(422, str(err)) from None
    dataset = Dataset(owner=owner, purpose=purpose, filename=upload.filename, path=str(final),
                      bytes=upload.bytes, documents=documents, approx_tokens=tokens, sha256=upload.sha256)
    db.add(dataset)
    db.commit()
    return dataset


@router.get("", response_model=list[DatasetOut])
def list_datasets(owner: Owner, db: DB) -> list[Dataset]:
    return list(db.scalars(select(Dataset).where(Dataset.owner == owner).order_by(Dataset.created_at.desc())))


def owned_dataset(db, owner: str, dataset_id: str) -> Dataset:
    dataset = db.get(Dataset, dataset_id)
    if dataset is None or dataset.owner != owner:
        raise HTTPException(404, f"dataset '{dataset_id}' not found")
    return dataset


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, owner: Owner, db: DB) -> Dataset:
    return owned_dataset(db, owner, dataset_id)


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, owner: Owner, db: DB) -> None:
    dataset = owned_dataset(db, owner, dataset_id)
    active = db.scalars(select(Job).where(Job.owner == owner, Job.status.in_(ACTIVE))).all()
    users = [job.id for job in active if dataset_id in dataset_refs(job.spec)]
    if users:
        raise HTTPException(409, f"dataset '{dataset_id}' is used by active job(s) {', '.join(users)}")
    db.delete(dataset)
    db.commit()
    Path(dataset.path).unlink(missing_ok=True)
    shutil.rmtree(cache_root(dataset.path), ignore_errors=True)  # cached reference targets built on it
