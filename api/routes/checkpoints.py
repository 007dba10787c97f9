"""GET /v1/jobs/{id}/checkpoints and their download: a streamed .tar.gz of a Hugging Face directory.

A download names no server path: its model card and (LoRA) adapter config are rendered again at tar time with the
job's registered model id and the owner's dataset names in place of the paths the run was given (``portable``).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
import time
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from mol_engine.budget import read_best
from mol_engine.export import (
    ExportError,
    checkpoint_card,
    export_checkpoint,
    export_kind,
    is_adapter,
    tied_aliases,
)
from mol_engine.model_card import base_is_hub, portable_files, reference_names, spec_references
from mol_engine.run_dir import BEST_NAME, is_sharded_checkpoint, is_step_name, step_name, step_of
from store.db import Dataset, Job

from ..deps import DB, Owner, StreamOwner, Svc, revocation_check
from ..disk import tree_bytes
from ..schemas import TARBALL, CheckpointOut, errors
from ..tarball import TarGzResponse
from .jobs import owned_job

router = APIRouter(prefix="/v1/jobs/{job_id}/checkpoints", tags=["checkpoints"], responses=errors(401, 404, 422))


@router.get("", response_model=list[CheckpointOut])
def list_checkpoints(job_id: str, owner: Owner, db: DB, svc: Svc) -> list[CheckpointOut]:
    owned_job(db, owner, job_id)
    run = svc.settings.run_dir(job_id)
    best = read_best(run.path)
    return [CheckpointOut(name=p.name, step=(step := step_of(p)), best=step == best,
                          kind="adapter" if is_adapter(p) else "full", bytes=download_bytes(p))
            for p in run.checkpoint_dirs()]


def resolve_name(run_dir: Path, name: str) -> str:
    """``name`` with the alias ``best`` replaced by the checkpoint ``best.json`` names; 409 when there is none."""
    if name != BEST_NAME:
        return name
    step = read_best(run_dir)
    if step is None:
        raise HTTPException(409, "checkpoint 'best': this job has no best checkpoint yet (the best is chosen among "
                                 "checkpoints evaluated at their step within max_general_kl; none is so far)")
    return step_name(step)


def download_bytes(checkpoint: Path) -> int:
    """The bytes of the model a download of ``checkpoint`` carries: its ``model/`` directory, and under FSDP the
    weights in its shards (not the optimizer state or RNG beside them; a tied head once)."""
    if not is_sharded_checkpoint(checkpoint):
        return tree_bytes(checkpoint / "model")
    from mol_engine.checkpoint import sharded_weight_bytes  # reading the shards' index needs torch

    return tree_bytes(checkpoint / "model") + sharded_weight_bytes(checkpoint, tied_aliases(checkpoint / "model"))


def download_source(checkpoint: Path, format: str, scratch: Path) -> Path:
    """The directory a download tars: the checkpoint's HF model, or for a LoRA checkpoint in ``format`` merged
    the base with the adapter merged in, or for an FSDP checkpoint its shards gathered, exported under ``scratch``
    (ExportError when it cannot be)."""
    adapter = is_adapter(checkpoint)
    if format == "adapter" and not adapter:
        raise HTTPException(422, "format: 'adapter' is only available for LoRA jobs")
    if (format == "merged" and adapter) or is_sharded_checkpoint(checkpoint):  # FSDP's shards: gathered here
        return export_checkpoint(checkpoint, scratch / "model", merged=format == "merged")
    return checkpoint / "model"


def dataset_labels(db, job: Job) -> dict[str, str]:
    """Each dataset id in the job's spec -> the owner's name for it (``file.jsonl (ds_…)``)."""
    ids = spec_references(job.spec)[1:]
    found = db.scalars(select(Dataset).where(Dataset.owner == job.owner, Dataset.id.in_(ids)))
    return {d.id: f"{d.filename} ({d.id})" for d in found}


def portable(checkpoint: Path, source: Path, format: str, submitted: dict, labels: dict[str, str]) -> dict[str, bytes]:
    """The files of the downloaded ``source`` that would name server paths (card, adapter config), rewritten with
    the ``submitted`` spec's references in their place (the model id, dataset ids named by ``labels``); none for a
    directory without a trainer state (which the engine never leaves: its state file is written before the rename)."""
    card = checkpoint_card(checkpoint)
    if card is None:
        return {}
    if not base_is_hub(card):  # where a user finds a copy of the base: this server, not the path it read it from
        card["base_source"] = (f"the model `{submitted['base_model']}` of the MoL Studio server that trained it "
                               "(`GET /v1/models` lists it)")
    kind = export_kind(checkpoint, merged=format == "merged")
    return portable_files(source, card, kind, reference_names(card["spec"], submitted, labels))


def archive_name(job_id: str, name: str, kind: str) -> str:
    """The folder a download of checkpoint ``name`` holding ``kind`` (see ``export_kind``) unpacks into, its file
    name without ``.tar.gz``: a LoRA checkpoint's adapter and merged model get distinct ones (unpacked into one
    folder, transformers would apply the adapter to weights that already hold it), full weights the plain name."""
    return f"{job_id}-{name}" if kind == "full" else f"{job_id}-{name}-{kind}"


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the quota) is full: an OSError, or safetensors' error wrapping one."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if type(err).__module__.split(".")[0] != "safetensors":
        return False
    from mol_engine.checkpoint import is_disk_full  # torch: already loaded by the export that failed

    return is_disk_full(err)


STALE_EXPORT_S = 24 * 3600  # a scratch this old outlived its response: the API process died while it streamed


def new_scratch(exports: Path, prefix: str) -> Path:
    """A new empty directory under ``exports``, after removing those a dead process left (older than a day)."""
    exports.mkdir(parents=True, exist_ok=True)
    for old in exports.iterdir():
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > STALE_EXPORT_S:
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=exports))


@router.get("/{name}/download", response_class=StreamingResponse, responses={
    200: {"content": TARBALL, "description": "a Hugging Face directory as a streamed .tar.gz"}} | errors(409, 507))
def download_checkpoint(job_id: str, name: str, owner: StreamOwner, svc: Svc, request: Request,
                        format: str = "merged"):
    """Streams the checkpoint as .tar.gz; no database connection is held while it (or a merge) runs. 507 when the
    disk fills up while a merge or a gather is written (the partial export removed); the download is cut if the
    token is revoked while it streams."""
    with svc.sessions() as db:
        job = owned_job(db, owner, job_id)
        submitted, labels = job.spec, dataset_labels(db, job)
    run = svc.settings.run_dir(job_id)
    name = resolve_name(run.path, name)
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
        replaced = portable(path, source, format, submitted, labels)
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
