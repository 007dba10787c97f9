"""/v1/uploads: a large file in parts (create, send parts, complete), resumable after a dropped connection."""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from store.db import Dataset, Upload

from .. import upload_state as state
from ..dataset_store import EXISTING_HEADER, keep_dataset
from ..deps import DB, Owner, StreamOwner, Svc
from ..schemas.common import RAW_BODY, errors
from ..schemas.datasets import CompleteIn, DatasetOut, PartOut, UploadIn, UploadOut
from ..services.datasets import mark_existing
from ..services.quotas import check_upload_quota
from ..upload import DiskFull
from ..upload_parts import MAX_PARTS, TooLarge, assemble, receive_part

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=errors(401, 422))
Index = Annotated[int, Path(ge=0, lt=MAX_PARTS)]


@router.post("", status_code=201, response_model=UploadOut, responses=errors(400, 403, 413, 429))
def create_upload(body: UploadIn, owner: Owner, db: DB, svc: Svc) -> Upload:
    check_upload_quota(svc.sessions, owner, svc.settings, body.bytes)  # 429 past the storage quota
    return state.create_upload(db, owner, body, svc.settings)


@router.get("/{upload_id}", response_model=UploadOut, responses=errors(404))
def get_upload(upload_id: str, owner: Owner, db: DB) -> Upload:
    return state.owned_upload(db, owner, upload_id)


@router.put("/{upload_id}/parts/{index}", response_model=PartOut, openapi_extra=RAW_BODY,
            responses=errors(400, 403, 404, 409, 413, 507))
async def put_part(upload_id: str, index: Index, request: Request, owner: StreamOwner, svc: Svc) -> PartOut:
    room = await run_in_threadpool(state.room_for_part, svc.sessions, owner, upload_id, index)
    too_large = HTTPException(413, f"part {index}: more than the {room.left} bytes left of the {room.declared} "
                                   f"declared for upload '{upload_id}'")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > room.left:
        raise too_large
    try:
        part = await receive_part(request.stream(), svc.settings.uploads_dir / upload_id, index, room.left)
    except TooLarge:
        raise too_large from None
    except DiskFull:
        raise HTTPException(507, f"disk full while writing part {index} of upload {upload_id}; free space and "
                                 "retry this part") from None
    except ClientDisconnect:
        raise HTTPException(400, f"part {index}: the connection dropped before the part was whole") from None
    except FileNotFoundError:
        raise HTTPException(409, f"part {index}: upload '{upload_id}' was cancelled while it arrived") from None
    try:
        old = await run_in_threadpool(state.record_part, svc.sessions, upload_id, index, part)
    except BaseException:
        part.path.unlink(missing_ok=True)
        raise
    if old and old != part.path.name:
        (part.path.parent / old).unlink(missing_ok=True)
    return PartOut(index=index, bytes=part.bytes, sha256=part.sha256)


@router.post("/{upload_id}/complete", status_code=201, response_model=DatasetOut,
             responses={200: {"model": DatasetOut, "description": "completed before, or the owner's dataset of "
                               f"the same file and purpose stored before (then with the {EXISTING_HEADER} header)"}}
             | errors(400, 403, 404, 409, 507))
async def complete_upload(upload_id: str, body: CompleteIn, response: Response, owner: StreamOwner,
                          svc: Svc) -> Dataset:
    upload = await run_in_threadpool(state.begin_complete, svc.sessions, owner, upload_id, body.part_count)
    if upload.status == "completed":  # completed before (a retried request): the same dataset again
        response.status_code = 200
        return await run_in_threadpool(state.dataset_of, svc.sessions, upload)
    try:
        dataset, new = await _build_dataset(upload, body.sha256, owner, svc)
    except BaseException:
        await run_in_threadpool(state.reopen, svc.sessions, upload_id)
        raise
    shutil.rmtree(svc.settings.uploads_dir / upload_id, ignore_errors=True)
    if not new:
        mark_existing(response, dataset)
    return dataset


async def _build_dataset(upload: Upload, expected: str | None, owner: str, svc: Svc) -> tuple[Dataset, bool]:
    """(the dataset, whether new): the parts joined into the dataset store, checked against ``expected``, validated
    and recorded, or the owner's dataset of the same bytes."""
    files = [svc.settings.uploads_dir / upload.id / part.file for part in upload.parts]
    try:
        received = await run_in_threadpool(assemble, files, svc.settings.datasets_dir, upload.filename, upload.bytes)
    except DiskFull:
        raise HTTPException(507, f"disk full while assembling upload {upload.id}; free space and complete it "
                                 "again (the parts are kept)") from None
    if expected and expected.lower() != received.sha256:
        received.path.unlink(missing_ok=True)
        raise HTTPException(422, f"sha256: the parts make a file with sha256 {received.sha256}, not the expected "
                                 f"{expected.lower()}; compare each part's sha256 (GET the upload) and resend")
    return await keep_dataset(svc.sessions, owner, upload.purpose, received, svc.settings.max_bad_lines,
                              then=lambda db, dataset: state.finish(db, upload.id, dataset))


@router.post("/{upload_id}/cancel", response_model=UploadOut, responses=errors(403, 404, 409))
def cancel_upload(upload_id: str, owner: Owner, db: DB, svc: Svc) -> Upload:
    return state.cancel_upload(db, owner, upload_id, svc.settings.uploads_dir)
