"""The uploads and upload_parts rows: an upload's life (pending -> completing -> completed, or cancelled) and the
parts it has received. Functions given a session factory open short transactions of their own, so that no
request holds a pooled connection while bytes flow.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from fastapi import HTTPException
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from store.db import Dataset, Upload, UploadPart, is_id, utcnow
from store.settings import Settings

from .checks.names import name_problem
from .schemas.datasets import UploadIn
from .upload_parts import Part


class Room(NamedTuple):
    """How many bytes a part may hold (the declared size less the other parts), and the declared size."""

    left: int
    declared: int


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def create_upload(db: Session, owner: str, body: UploadIn, settings: Settings) -> Upload:
    """A new pending upload; 413 when the declared size is over the limit, 422 for the purpose or file name."""
    if body.bytes > settings.max_upload_bytes:
        raise HTTPException(413, f"bytes: {body.bytes} is larger than the limit of {settings.max_upload_mb:g} MiB")
    problem = name_problem(body.purpose, body.filename, field="filename")
    if problem:
        raise HTTPException(422, problem)
    purge_expired(db, settings.uploads_dir)
    upload = Upload(owner=owner, purpose=body.purpose, filename=Path(body.filename).name, bytes=body.bytes,
                    mime_type=body.mime_type, expires_at=utcnow() + timedelta(hours=settings.upload_expiry_h))
    db.add(upload)
    db.commit()
    return upload


def owned_upload(db: Session, owner: str, upload_id: str) -> Upload:
    """The owner's upload, with its parts; 404 for anyone else's, an unknown id or an expired upload."""
    upload = db.get(Upload, upload_id) if is_id(upload_id) else None
    if upload is None or upload.owner != owner:
        raise HTTPException(404, f"upload '{upload_id}' not found")
    if _aware(upload.expires_at) < utcnow():
        raise HTTPException(404, f"upload '{upload_id}' expired at {upload.expires_at:%Y-%m-%d %H:%M} UTC; "
                                 "create a new one")
    return upload


def _require_pending(upload: Upload) -> None:
    if upload.status == "completed":
        raise HTTPException(409, f"upload '{upload.id}' is already completed as dataset '{upload.dataset_id}'")
    if upload.status == "completing":
        raise HTTPException(409, f"upload '{upload.id}' is being completed; GET it to see when it is done")
    if upload.status != "pending":
        raise HTTPException(409, f"upload '{upload.id}' is {upload.status}; create a new one")


def room_for_part(sessions: sessionmaker, owner: str, upload_id: str, index: int) -> Room:
    """The room part ``index`` of a pending upload may fill (a part sent again replaces the earlier one)."""
    with sessions() as db:
        upload = owned_upload(db, owner, upload_id)
        _require_pending(upload)
        others = sum(part.bytes for part in upload.parts if part.index != index)
        return Room(upload.bytes - others, upload.bytes)


def record_part(sessions: sessionmaker, upload_id: str, index: int, part: Part) -> str | None:
    """Record ``part`` as part ``index``; returns the file name of the part it replaces, if any.

    409 if the upload stopped taking parts meanwhile, 413 if parts sent alongside left no room for it.
    """
    with sessions.begin() as db:
        # Takes the upload's row lock first, so that parts and completion follow one another.
        still = update(Upload).where(Upload.id == upload_id, Upload.status == "pending").values(status="pending")
        if not db.execute(still).rowcount:
            raise HTTPException(409, f"part {index}: upload '{upload_id}' stopped taking parts while it arrived")
        upload = db.get(Upload, upload_id)
        others = sum(p.bytes for p in upload.parts if p.index != index)
        if others + part.bytes > upload.bytes:
            raise HTTPException(413, f"part {index}: the parts would hold {others + part.bytes} bytes, more than "
                                     f"the {upload.bytes} declared for upload '{upload_id}'")
        row = next((p for p in upload.parts if p.index == index), None)
        old = row.file if row else None
        if row is None:
            row = UploadPart(index=index)
            upload.parts.append(row)
        row.bytes, row.sha256, row.file = part.bytes, part.sha256, part.path.name
    return old


def missing_parts(received: set[int], count: int, shown: int = 20) -> tuple[list[int], int]:
    """(the first ``shown`` indices of 0..count-1 not in ``received``, how many are missing in all).

    Walks at most ``len(received) + shown`` indices, however large ``count`` is.
    """
    first: list[int] = []
    index = 0
    while len(first) < shown and index < count:
        if index not in received:
            first.append(index)
        index += 1
    return first, count - sum(1 for i in received if 0 <= i < count)


def _check_parts(upload: Upload, part_count: int | None) -> None:
    """422 unless parts 0..n-1 are all there and hold the declared size."""
    received = {part.index for part in upload.parts}
    count = part_count if part_count is not None else max(received, default=-1) + 1
    first, missing = missing_parts(received, count)
    if missing:
        shown = ", ".join(map(str, first)) + (f" and {missing - len(first)} more" if missing > len(first) else "")
        raise HTTPException(422, f"parts: missing part {shown} of 0..{count - 1}; send them, then complete again")
    total = sum(part.bytes for part in upload.parts if part.index < count)
    if total != upload.bytes:
        raise HTTPException(422, f"bytes: parts 0..{count - 1} hold {total} bytes; the upload declared {upload.bytes}")


def begin_complete(sessions: sessionmaker, owner: str, upload_id: str, part_count: int | None) -> Upload:
    """The upload, now ``completing``, its parts checked; an upload already completed comes back as it is."""
    with sessions.begin() as db:
        upload = owned_upload(db, owner, upload_id)
        if upload.status == "completed":
            return upload
        _require_pending(upload)
        claim = update(Upload).where(Upload.id == upload_id, Upload.status == "pending").values(status="completing")
        if not db.execute(claim).rowcount:
            raise HTTPException(409, f"upload '{upload_id}' is being completed; GET it to see when it is done")
        db.refresh(upload, ["status", "parts"])  # as they stand now that parts wait for this transaction
        _check_parts(upload, part_count)  # a 422 rolls the claim back
        return upload


def finish(db: Session, upload_id: str, dataset: Dataset) -> None:
    """Mark the upload completed as ``dataset`` and forget its parts (in the caller's transaction)."""
    db.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
    db.execute(update(Upload).where(Upload.id == upload_id).values(status="completed", dataset_id=dataset.id))


def reopen(sessions: sessionmaker, upload_id: str) -> None:
    """Back to ``pending`` after a completion that failed, so the client can fix parts and complete again."""
    with sessions.begin() as db:
        db.execute(update(Upload).where(Upload.id == upload_id, Upload.status == "completing")
                   .values(status="pending"))


def dataset_of(sessions: sessionmaker, upload: Upload) -> Dataset:
    """The dataset a completed upload became; 404 if it was deleted since."""
    with sessions() as db:
        dataset = db.get(Dataset, upload.dataset_id)
    if dataset is None:
        raise HTTPException(404, f"upload '{upload.id}' became dataset '{upload.dataset_id}', deleted since")
    return dataset


def cancel_upload(db: Session, owner: str, upload_id: str, root: Path) -> Upload:
    """The upload, cancelled, with its parts deleted; 409 once it is completing or completed."""
    upload = owned_upload(db, owner, upload_id)
    if upload.status != "cancelled":
        _require_pending(upload)
        upload.status = "cancelled"
        upload.parts.clear()
        db.commit()
    shutil.rmtree(root / upload_id, ignore_errors=True)
    return upload


def purge_expired(db: Session, root: Path) -> None:
    """Delete uploads past their expiry, with their parts (one being completed right now is left alone)."""
    expired = db.scalars(select(Upload).where(Upload.expires_at < utcnow(), Upload.status != "completing")).all()
    for upload in expired:
        db.delete(upload)
        shutil.rmtree(root / upload.id, ignore_errors=True)
    db.commit()
