"""GET /v1/jobs/{id}/checkpoints and their download: a streamed .tar.gz of a Hugging Face directory."""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from mol_engine.checkpoint import checkpoint_dirs
from mol_engine.export import ExportError, export_checkpoint, is_adapter

from ..deps import DB, Owner, Svc
from ..disk import tree_bytes
from ..schemas import TARBALL, CheckpointOut, errors
from .jobs import owned_job

router = APIRouter(prefix="/v1/jobs/{job_id}/checkpoints", tags=["checkpoints"], responses=errors(401, 404, 422))


@router.get("", response_model=list[CheckpointOut])
def list_checkpoints(job_id: str, owner: Owner, db: DB, svc: Svc) -> list[CheckpointOut]:
    owned_job(db, owner, job_id)
    return [CheckpointOut(name=p.name, step=int(p.name.split("-")[1]), kind="adapter" if is_adapter(p) else "full",
                          bytes=tree_bytes(p / "model")) for p in checkpoint_dirs(svc.settings.runs_dir / job_id)]


class _Pipe:
    """A file-like sink whose writes become chunks of a streaming response (tar writes, the client reads)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.cond = threading.Condition()
        self.closed = False

    def write(self, data: bytes) -> int:
        with self.cond:
            while len(self.chunks) > 16 and not self.closed:  # back-pressure
                self.cond.wait()
            self.chunks.append(bytes(data))
            self.cond.notify_all()
        return len(data)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self.cond:
                while not self.chunks and not self.closed:
                    self.cond.wait()
                if not self.chunks:
                    return
                chunk = self.chunks.pop(0)
                self.cond.notify_all()
            yield chunk


def _tar_stream(directory: Path, arcname: str, cleanup: Path | None) -> Iterator[bytes]:
    pipe = _Pipe()

    def produce() -> None:
        try:
            with tarfile.open(fileobj=pipe, mode="w|gz") as tar:
                tar.add(directory, arcname=arcname)
        finally:
            pipe.close()
            if cleanup:
                shutil.rmtree(cleanup, ignore_errors=True)

    threading.Thread(target=produce, daemon=True).start()
    yield from pipe


@router.get("/{name}/download", response_class=StreamingResponse, responses={
    200: {"content": TARBALL, "description": "a Hugging Face directory as a streamed .tar.gz"}} | errors(409))
def download_checkpoint(job_id: str, name: str, owner: Owner, db: DB, svc: Svc, format: str = "merged"):
    owned_job(db, owner, job_id)
    if not re.fullmatch(r"step-\d+", name):
        raise HTTPException(404, f"checkpoint '{name}' not found")
    path = svc.settings.runs_dir / job_id / "checkpoints" / name
    if not path.is_dir():
        raise HTTPException(404, f"checkpoint '{name}' not found")
    if format not in ("merged", "adapter"):
        raise HTTPException(422, "format: must be 'merged' or 'adapter'")
    adapter = is_adapter(path)
    if format == "adapter" and not adapter:
        raise HTTPException(422, "format: 'adapter' is only available for LoRA jobs")
    source, cleanup = path / "model", None
    if adapter and format == "merged":
        cleanup = Path(tempfile.mkdtemp(prefix="mol-export-"))
        try:
            source = export_checkpoint(path, cleanup / "model", merged=True)
        except ExportError as err:
            shutil.rmtree(cleanup, ignore_errors=True)
            raise HTTPException(409, str(err)) from None
    filename = f"{job_id}-{name}-{format}.tar.gz"
    return StreamingResponse(_tar_stream(source, f"{job_id}-{name}", cleanup), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})
