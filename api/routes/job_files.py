"""GET /v1/jobs/{id}/log (the job's log, tailed by offset) and /v1/jobs/{id}/trackers (its trackers' folders, each
downloadable as .tar.gz): files the worker writes in the job's run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from mol_engine.spec import Tracker
from mol_engine.trackers import OUTPUT_DIRS
from store.dataset_names import relabel, stored_names
from store.jobs import FINAL
from store.usage import tree_bytes

from ..deps import DB, OwnedJob, Owner, StreamOwner, Svc, owned_job, revocation_check
from ..job_log import OffsetPastEnd, read_log
from ..schemas.common import TARBALL, errors
from ..schemas.jobs import JobLogOut, TrackerOut
from ..tarball import TarGzResponse

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["jobs"], responses=errors(401, 404, 422))
Offset = Annotated[int | None, Query(ge=0, le=2**53, description=(
    "read from this byte (a previous answer's next_offset); without it, the log's last MOL_JOB_LOG_TAIL_KB"))]
# how to look at a tracker's folder once its archive is unpacked ({folder}: the unpacked folder's name)
VIEW: dict[Tracker, str] = {"tensorboard": "tensorboard --logdir {folder}",
                            "mlflow": "mlflow ui --backend-store-uri ./{folder}",
                            "wandb": "wandb sync {folder}/offline-run-*"}



@router.get("/log", response_model=JobLogOut)
def job_log(job_id: str, job: OwnedJob, owner: Owner, db: DB, svc: Svc, offset: Offset = None) -> JobLogOut:
    """The job's log from ``offset`` (its runner's progress lines, events, warnings and tracebacks, and its
    worker's lines about each attempt), at most ``MOL_JOB_LOG_CHUNK_KB``; dataset paths show as the owner's file
    names. Follow it by asking again from ``next_offset``. 422 for an offset past the log's end."""
    ended, labels = job.status in FINAL, stored_names(db, owner)
    db.close()
    settings = svc.settings
    try:
        chunk = read_log(settings.job_log_file(job_id), offset, int(settings.job_log_chunk_kb * 1024),
                         int(settings.job_log_tail_kb * 1024))
    except OffsetPastEnd as err:
        raise HTTPException(422, str(err)) from None
    return JobLogOut(offset=chunk.offset, next_offset=chunk.next_offset, size=chunk.size,
                     text=relabel(chunk.text, labels), ended=ended)


def tracker_folders(run_dir: Path) -> dict[str, Path]:
    """tracker name -> its folder in ``run_dir``, for those that wrote one."""
    return {name: run_dir / folder for name, folder in OUTPUT_DIRS.items() if (run_dir / folder).is_dir()}


@router.get("/trackers", response_model=list[TrackerOut])
def list_trackers(job_id: str, _job: OwnedJob, db: DB, svc: Svc) -> list[TrackerOut]:
    """The folders the job's trackers (its spec's ``report_to``) wrote in its run directory; none for a tracker
    that logs elsewhere (``MLFLOW_TRACKING_URI`` or ``WANDB_MODE=online`` set on the worker)."""
    db.close()
    found = tracker_folders(svc.settings.run_dir(job_id).path)
    return [TrackerOut(name=name, folder=path.name, bytes=tree_bytes(path),
                       download=f"/v1/jobs/{job_id}/trackers/{name}/download",
                       view=VIEW[name].format(folder=f"{job_id}-{path.name}")) for name, path in found.items()]


@router.get("/trackers/{name}/download", response_class=StreamingResponse, responses={
    200: {"content": TARBALL, "description": "the tracker's folder as a streamed .tar.gz"}})
def download_tracker(job_id: str, name: str, owner: StreamOwner, svc: Svc, request: Request):
    """Streams the tracker's folder as ``JOB-FOLDER.tar.gz``, unpacking into ``JOB-FOLDER/``."""
    with svc.sessions() as db:
        owned_job(db, owner, job_id)
    path = tracker_folders(svc.settings.run_dir(job_id).path).get(name)
    if path is None:
        raise HTTPException(404, f"tracker '{name}': this job has no output of it")
    return TarGzResponse(path, f"{job_id}-{path.name}", f"{job_id}-{path.name}.tar.gz",
                         revoked=revocation_check(request, svc), recheck_s=svc.settings.token_recheck_s)
