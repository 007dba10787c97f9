"""GET /v1/jobs/{id}/checkpoints and their download: a streamed .tar.gz of a Hugging Face directory (what it is
made of: api/services/checkpoint_downloads.py)."""

from __future__ import annotations

import shutil

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from mol_engine.export import ExportError, export_kind
from mol_engine.run_dir import is_step_name
from store.lineage import lineage_of

from ..deps import OwnedJob, StreamOwner, Svc, owned_job, revocation_check
from ..schemas.common import TARBALL, errors
from ..schemas.jobs import CheckpointOut
from ..services.checkpoint_downloads import (
    archive_name,
    disk_full,
    download_source,
    new_scratch,
    portable,
    spec_dataset_labels,
)
from ..services.checkpoints import checkpoints_listed, resolve_checkpoint_name
from ..tarball import TarGzResponse

router = APIRouter(prefix="/v1/jobs/{job_id}/checkpoints", tags=["checkpoints"], responses=errors(401, 404, 422))


@router.get("", response_model=list[CheckpointOut])
def list_checkpoints(job_id: str, _job: OwnedJob, svc: Svc) -> list[CheckpointOut]:
    return checkpoints_listed(svc.settings.run_dir(job_id))


@router.get("/{name}/download", response_class=StreamingResponse, responses={
    200: {"content": TARBALL, "description": "a Hugging Face directory as a streamed .tar.gz"}} | errors(409, 507))
def download_checkpoint(job_id: str, name: str, owner: StreamOwner, svc: Svc, request: Request,
                        format: str = "merged"):
    """Streams the checkpoint as .tar.gz; no database connection is held while it (or a merge) runs. 507 when the
    disk fills up while a merge or a gather is written (the partial export removed); the download is cut if the
    token is revoked while it streams."""
    with svc.sessions() as db:
        job = owned_job(db, owner, job_id)
        submitted, labels, lineage = job.spec, spec_dataset_labels(db, job), lineage_of(job)
    run = svc.settings.run_dir(job_id)
    name = resolve_checkpoint_name(run.path, name)
    if not is_step_name(name):
        raise HTTPException(404, f"checkpoint '{name}' not found")
    path = run.checkpoint(name)
    if not path.is_dir():
        raise HTTPException(404, f"checkpoint '{name}' not found")
    if format not in ("merged", "adapter"):
        raise HTTPException(422, "format: must be 'merged' or 'adapter'")
    scratch = None
    try:
        scratch = new_scratch(svc.settings.exports_dir, f"{job_id}-{name}-")
        source = download_source(path, format, scratch)
        replaced = portable(path, source, format, submitted, labels, lineage)
    except BaseException as err:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(err, ExportError):
            raise HTTPException(409, str(err)) from None
        if disk_full(err):
            raise HTTPException(507, f"checkpoint '{name}': the server's disk is full while preparing the "
                                     f"'{format}' download; free space and try again") from None
        raise
    folder = archive_name(job_id, name, export_kind(path, merged=format == "merged"))
    return TarGzResponse(source, folder, f"{folder}.tar.gz", cleanup=scratch,
                         replaced=replaced, revoked=revocation_check(request, svc),
                         recheck_s=svc.settings.token_recheck_s)
