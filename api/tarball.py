"""A directory streamed as a .tar.gz, made as the client reads it: no pipe, no thread of its own, nothing whole.

``tar_gz_chunks`` is a plain generator: tarfile writes each member's header (``TarInfo.tobuf``), the file's
bytes follow in chunks, zlib compresses them in gzip framing. The response pulls one chunk at a time (in one
of the PRODUCERS threads), so a client that reads slowly holds back the producer, and one that goes away
stops it at once (the generator is closed); a temporary tree the download was made from is removed whichever
way the response ends. A download given a ``revoked`` check asks it every ``recheck_s`` seconds and is cut (the
connection dropped, the body unfinished) once its token has been revoked. ``replaced`` files (a few small ones,
by path inside the directory) are sent from memory instead of the disk, or added when the directory lacks them:
the download's portable model card and adapter config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tarfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

CHUNK = 1 << 20
GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for the gzip container
# Threads that read and compress download chunks, for all downloads of the process together: many downloads
# then share two cores' worth of work instead of taking the thread pool that every other request runs in.
PRODUCERS = anyio.CapacityLimiter(2)
LEVEL = 1  # weights barely compress: bf16 0.80 of its size at level 1, 0.79 at 6, for a third of the CPU
log = logging.getLogger(__name__)


class DownloadRevoked(Exception):
    """The token a download was made with has been revoked while it streamed."""


def _members(directory: Path, name: str) -> Iterator[tuple[Path, str]]:
    """(path, name in the archive) of ``directory`` and everything under it, in sorted order as tar -c does."""
    yield directory, name
    if directory.is_dir() and not directory.is_symlink():
        for child in sorted(directory.iterdir()):
            yield from _members(child, f"{name}/{child.name}")


def tar_info(path: Path, name: str) -> tarfile.TarInfo | None:
    """The tar header of ``path`` (a directory, a regular file or a symlink); None for anything else."""
    info = tarfile.TarInfo(name)
    st = path.lstat()
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    else:
        return None
    return info


def _file_blocks(path: Path, size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of ``path`` in chunks, then the zero padding to tar's 512-byte block."""
    left = size
    with path.open("rb") as source:
        while left:
            chunk = source.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{path} shrank while it was being sent")
            left -= len(chunk)
            yield chunk
    if size % tarfile.BLOCKSIZE:
        yield tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)


def _padded(data: bytes) -> bytes:
    """``data`` and the zero padding to tar's 512-byte block."""
    return data + tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE)


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def tar_chunks(directory: Path, arcname: str, replaced: Mapping[str, bytes] | None = None) -> Iterator[bytes]:
    """The uncompressed tar stream of ``directory`` stored as ``arcname``, member by member; a file whose path
    inside ``directory`` is a key of ``replaced`` has that content instead (added at the end when absent)."""
    pending = dict(replaced or {})
    for path, name in _members(directory, arcname):
        info = tar_info(path, name)
        if info is None:
            continue
        inner = name.removeprefix(f"{arcname}/")
        if info.isreg() and inner in pending:
            info.size = len(data := pending.pop(inner))
            yield _header(info) + _padded(data)
            continue
        yield _header(info)
        if info.isreg():
            yield from _file_blocks(path, info.size)
    for inner, data in pending.items():
        info = tarfile.TarInfo(f"{arcname}/{inner}")
        info.size, info.mode, info.mtime = len(data), 0o644, int(directory.stat().st_mtime)
        yield _header(info) + _padded(data)
    yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)  # end of archive


def tar_gz_chunks(directory: Path, arcname: str, replaced: Mapping[str, bytes] | None = None) -> Iterator[bytes]:
    """``tar_chunks`` compressed as gzip; yields only non-empty chunks."""
    gz = zlib.compressobj(LEVEL, zlib.DEFLATED, GZIP)
    with contextlib.closing(tar_chunks(directory, arcname, replaced)) as raw_chunks:  # closed with this generator
        for raw in raw_chunks:
            if out := gz.compress(raw):
                yield out
    yield gz.flush()


async def _pulled(chunks: Iterator[bytes], revoked: Callable[[], bool] | None = None,
                  recheck_s: float = 15.0) -> AsyncIterator[bytes]:
    """``chunks`` one at a time from a PRODUCERS thread, closed (its open file too) however the iteration ends;
    DownloadRevoked when ``revoked()``, asked every ``recheck_s`` seconds (in a thread: it reads the database),
    says so."""
    check_at = time.monotonic() + recheck_s
    try:
        while (chunk := await anyio.to_thread.run_sync(next, chunks, None, limiter=PRODUCERS)) is not None:
            if revoked is not None and time.monotonic() >= check_at:
                if await anyio.to_thread.run_sync(revoked):
                    raise DownloadRevoked
                check_at = time.monotonic() + recheck_s
            yield chunk
    finally:
        chunks.close()  # a thread running next() is waited for by the cancellation, so this never races it


class TarGzResponse(StreamingResponse):
    """``directory`` as a streamed .tar.gz download named ``filename``.

    ``cleanup`` (a temporary tree, e.g. a merged export) is removed when the response ends: read to the end,
    the client gone midway, cut, or never started. ``replaced``: see :func:`tar_chunks`. ``revoked`` and
    ``recheck_s``: see :func:`_pulled`; a revoked download ends with its body unfinished, which makes the server
    drop the connection, so the client sees a broken download rather than a short one.
    """

    media_type = "application/gzip"

    def __init__(self, directory: Path, arcname: str, filename: str, cleanup: Path | None = None,
                 replaced: Mapping[str, bytes] | None = None, revoked: Callable[[], bool] | None = None,
                 recheck_s: float = 15.0) -> None:
        self.cleanup = cleanup
        super().__init__(_pulled(tar_gz_chunks(directory, arcname, replaced), revoked, recheck_s),
                         headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except DownloadRevoked:
            log.warning("download %s cut: its token was revoked", scope.get("path"))
        finally:
            with anyio.CancelScope(shield=True):  # runs even when the server cancels the request
                await self.body_iterator.aclose()
                if self.cleanup is not None:
                    await run_in_threadpool(shutil.rmtree, self.cleanup, True)
