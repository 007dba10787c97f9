"""Uploads in parts, on disk: each part streamed into a hidden file, counted, hashed and sealed into place; the
parts joined into one file of the dataset store with the sha256 of the whole.

A file only ever gets its final name once it is whole and flushed to disk (``HiddenFile.seal``), so a dropped
connection, a refused size or a full disk leaves nothing that could be read back as data.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from starlette.concurrency import run_in_threadpool

from .upload import DiskFull, Received, stored_name

CHUNK = 1 << 20
MAX_PARTS = 10_000  # at 8 MiB a part, 80 GB


class TooLarge(Exception):
    """More bytes arrived than the file was allowed to hold."""


@dataclass
class Part:
    """A received part: its file (final name), size and sha256."""

    path: Path
    bytes: int
    sha256: str


class HiddenFile:
    """A file written under a hidden temporary name, counted and hashed as it goes, visible once sealed.

    As a context manager: leaving it unsealed (an error, a dropped client) deletes the file, and a full disk
    (ENOSPC) comes out as DiskFull.
    """

    def __init__(self, temp: Path, limit: int) -> None:
        self.temp, self.limit = temp, limit
        self.bytes = 0
        self.sealed = False
        self._digest = hashlib.sha256()

    def __enter__(self) -> HiddenFile:
        self.temp.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._file = self.temp.open("xb")
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DiskFull from err
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.sealed:
            return
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            self._file.close()
        self.temp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise DiskFull from err

    def write(self, data: bytes) -> None:
        """Append ``data``; TooLarge once the file passes its limit."""
        self.bytes += len(data)
        if self.bytes > self.limit:
            raise TooLarge(self.bytes)
        self._digest.update(data)
        self._file.write(data)

    def seal(self, final: Path) -> str:
        """Flush to disk and move the file to ``final``; returns its sha256."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temp, final)
        self.sealed = True
        return self._digest.hexdigest()


async def receive_part(chunks: AsyncIterator[bytes], directory: Path, index: int, room: int) -> Part:
    """Part ``index`` streamed from ``chunks`` into ``directory`` under a name of its own.

    Raises TooLarge past ``room`` bytes and DiskFull on a full disk; whatever the error (a dropped client
    included), nothing of the part is left.
    """
    token = uuid.uuid4().hex[:12]
    final = directory / f"{index:06d}.{token}.part"
    with HiddenFile(directory / f".{index:06d}.{token}.tmp", room) as out:
        async for chunk in chunks:
            out.write(chunk)
        sha256 = await run_in_threadpool(out.seal, final)
    return Part(final, out.bytes, sha256)


def assemble(parts: list[Path], directory: Path, filename: str, size: int) -> Received:
    """The parts joined, in order, into a new file of ``directory`` (``size`` bytes at most), with its sha256.

    Raises DiskFull on a full disk, leaving nothing of the new file; the parts are kept.
    """
    name = stored_name(filename)
    with HiddenFile(directory / f".{name}.part", size) as out:
        for part in parts:
            with part.open("rb") as source:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
        sha256 = out.seal(directory / name)
    return Received(path=directory / name, filename=filename, bytes=out.bytes, sha256=sha256)
