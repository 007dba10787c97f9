"""What a checkpoint's download is made of: the directory it tars (a merge or a gather exported to a scratch
directory when needed), its files rewritten to name no server path, and the folder it unpacks into.

A download names no server path: its model card and (LoRA) adapter config are rendered again at tar time with the
job's registered model id and the owner's dataset names in place of the paths the run was given (``portable``).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from mol_engine.export import checkpoint_card, export_checkpoint, export_kind, is_adapter
from mol_engine.model_card import base_is_hub, portable_files, reference_names, spec_references
from mol_engine.run_dir import is_sharded_checkpoint
from store.db import Dataset, Job
from store.lineage import Lineage


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


def spec_dataset_labels(db: Session, job: Job) -> dict[str, str]:
    """Each dataset id in the job's spec -> the owner's name for it (``file.jsonl (ds_…)``)."""
    ids = spec_references(job.spec)[1:]
    found = db.scalars(select(Dataset).where(Dataset.owner == job.owner, Dataset.id.in_(ids)))
    return {d.id: f"{d.filename} ({d.id})" for d in found}


def portable(checkpoint: Path, source: Path, format: str, submitted: dict, labels: dict[str, str],
             lineage: Lineage | None = None) -> dict[str, bytes]:
    """The files of the downloaded ``source`` that would name server paths (card, adapter config), rewritten with
    the ``submitted`` spec's references in their place (the model id, dataset ids named by ``labels``), the card
    with the job's ``lineage`` when it continued from a checkpoint; none for a directory without a trainer state
    (which the engine never leaves: its state file is written before the rename)."""
    card = checkpoint_card(checkpoint)
    if card is None:
        return {}
    if not base_is_hub(card):  # where a user finds a copy of the base: this server, not the path it read it from
        card["base_source"] = (f"the model `{submitted['base_model']}` of the MoL Studio server that trained it "
                               "(`GET /v1/models` lists it)")
    if lineage is not None:
        card["lineage"] = asdict(lineage)
        card["base_source"] = (f"checkpoint `{lineage.parent_checkpoint}` of job `{lineage.parent_job_id}` on the "
                               f"MoL Studio server that trained it, a descendant of `{lineage.original_base_model}`")
        # the run's reference_model was the original base's directory (the worker's default): name it by its id
        submitted = submitted | {"reference_model": submitted.get("reference_model") or lineage.original_base_model}
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
