"""A job's log read in bounded chunks, for tailing it (GET /v1/jobs/{id}/log).

The worker appends to ``RUN/job.log`` (``Settings.job_log_file``): its runner's stderr and its own lines about
the job. A reader names a byte offset (the ``next_offset`` of its previous answer) and gets what follows, at most
``max_bytes``, cut after the last whole line; without an offset it gets the log's tail from the first whole line.
Offsets count the file's bytes, so a client that follows them sees every line once, whatever the text's encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class OffsetPastEnd(ValueError):
    """The offset asked for lies past the log's end (the log only grows while its job exists)."""


@dataclass(frozen=True)
class LogChunk:
    offset: int  # of the first byte returned
    next_offset: int  # where the next read starts: past the last byte returned
    size: int  # of the whole log when it was read
    text: str


def _whole_lines(data: bytes) -> bytes:
    """``data`` up to and including its last newline; all of it when it holds none (one line longer than a chunk)."""
    end = data.rfind(b"\n")
    return data[:end + 1] if end >= 0 else data


def read_log(path: Path, offset: int | None, max_bytes: int, tail_bytes: int) -> LogChunk:
    """The log's bytes from ``offset`` (at most ``max_bytes``, cut after a whole line unless the log ends there),
    or with no ``offset`` its last ``tail_bytes`` from the first whole line; an absent log reads as empty.
    OffsetPastEnd when ``offset`` is past the end."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        if offset:
            raise OffsetPastEnd(f"offset: {offset} is past the end of the log (0 bytes)") from None
        return LogChunk(0, 0, 0, "")
    with handle:
        size = handle.seek(0, 2)
        if offset is not None and offset > size:
            raise OffsetPastEnd(f"offset: {offset} is past the end of the log ({size} bytes)")
        tail = min(tail_bytes, max_bytes)
        start = max(0, size - tail) if offset is None else offset
        handle.seek(start)
        data = handle.read(min(max_bytes, size - start))  # not what was appended since the size was taken
    if offset is None and start > 0:  # a tail starts at a line, not in the middle of one
        newline = data.find(b"\n")
        if newline >= 0:
            start, data = start + newline + 1, data[newline + 1:]
    if start + len(data) < size:  # more follows: end at a whole line; the next read starts the next one
        data = _whole_lines(data)
    return LogChunk(start, start + len(data), size, data.decode("utf-8", errors="replace"))

