"""Keeping a received file as a Dataset: its contents checked, then its row recorded, for both ways in
(``POST /v1/datasets`` in one request, ``/v1/uploads`` in parts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from mol_engine.data import DataError
from store.db import Dataset, new_id
from store.settings import Settings

from .checks.dataset_contents import inspect_dataset
from .upload import Received

EXISTING_HEADER = "Mol-Existing-Dataset"  # on a 200 answering an upload of a file already stored: its dataset id


def stored_twin(db: Session, owner: str, purpose: str, sha256: str) -> Dataset | None:
    """The owner's dataset (the oldest) already holding a file with this sha256 for this purpose, whose file is
    still there: an upload of the same bytes again returns it instead of storing a copy."""
    same = select(Dataset).where(Dataset.owner == owner, Dataset.purpose == purpose, Dataset.sha256 == sha256)
    return next((d for d in db.scalars(same.order_by(Dataset.created_at, Dataset.id)) if Path(d.path).is_file()),
                None)


async def keep_dataset(sessions: sessionmaker, owner: str, purpose: str, received: Received, max_bad_lines: int,
                       then: Callable[[Session, Dataset], None] | None = None) -> tuple[Dataset, bool]:
    """(the Dataset for ``received``, a whole file in the dataset store; whether it is new).

    The owner's dataset of the same bytes and purpose when there is one (``received`` is deleted); else a new
    one recorded once its contents pass: 422 naming the field or each of the client's bad lines (the first
    ``max_bad_lines``, then how many more) when they do not, and the file is deleted. ``then(db, dataset)`` runs
    in the transaction that adds the row (or finds the twin). The database is used only after the (long) check.
    Whatever fails (a database error included), ``received`` is deleted.
    """
    try:
        return await _keep(sessions, owner, purpose, received, max_bad_lines, then)
    except BaseException:
        received.path.unlink(missing_ok=True)
        raise


async def _keep(sessions: sessionmaker, owner: str, purpose: str, received: Received, max_bad_lines: int,
                then: Callable[[Session, Dataset], None] | None) -> tuple[Dataset, bool]:
    path = received.path
    twin = await run_in_threadpool(_twin, sessions, owner, purpose, received.sha256, then)
    if twin is not None:
        path.unlink(missing_ok=True)
        return twin, False
    try:
        documents, tokens = await run_in_threadpool(inspect_dataset, path, purpose, received.filename,
                                                    max_bad_lines=max_bad_lines)
    except DataError as err:
        raise HTTPException(422, str(err)) from None
    dataset = Dataset(id=new_id("ds"), owner=owner, purpose=purpose, filename=received.filename, path=str(path),
                      bytes=received.bytes, documents=documents, approx_tokens=tokens, sha256=received.sha256)
    await run_in_threadpool(_record, sessions, dataset, then)
    return dataset, True


def _twin(sessions: sessionmaker, owner: str, purpose: str, sha256: str,
          then: Callable[[Session, Dataset], None] | None) -> Dataset | None:
    with sessions.begin() as db:
        twin = stored_twin(db, owner, purpose, sha256)
        if twin is not None and then is not None:
            then(db, twin)
    return twin


def _record(sessions: sessionmaker, dataset: Dataset, then: Callable[[Session, Dataset], None] | None) -> None:
    with sessions.begin() as db:
        db.add(dataset)
        if then is not None:
            then(db, dataset)


def owns_file(settings: Settings, dataset: Dataset) -> bool:
    """Whether the dataset's file is one the store created (an upload), which deleting the dataset deletes.

    Rows that point elsewhere, such as the demo corpora ``mol up`` registers in place, only reference a file.
    """
    return Path(dataset.path).resolve().is_relative_to(settings.datasets_dir.resolve())
