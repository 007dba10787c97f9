"""Keeping a received file as a Dataset: its contents checked, then its row recorded, for both ways in
(``POST /v1/datasets`` in one request, ``/v1/uploads`` in parts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import HTTPException
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from mol_engine.data import DataError

from .db import Dataset, new_id
from .settings import Settings
from .upload import Received
from .validation import inspect_dataset


async def keep_dataset(sessions: sessionmaker, owner: str, purpose: str, received: Received,
                       then: Callable[[Session, Dataset], None] | None = None) -> Dataset:
    """The Dataset recorded for ``received`` (a whole file in the dataset store) once its contents pass.

    422 naming the field or the client's line when they do not, and the file is deleted. ``then(db, dataset)``
    runs in the transaction that adds the row. The database is used only after the (long) check.
    """
    path = received.path
    try:
        documents, tokens = await run_in_threadpool(inspect_dataset, path, purpose, received.filename)
    except DataError as err:
        path.unlink(missing_ok=True)
        raise HTTPException(422, str(err)) from None
    dataset = Dataset(id=new_id("ds"), owner=owner, purpose=purpose, filename=received.filename, path=str(path),
                      bytes=received.bytes, documents=documents, approx_tokens=tokens, sha256=received.sha256)
    try:
        await run_in_threadpool(_record, sessions, dataset, then)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return dataset


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
