"""Streaming multipart parsing: the ``file`` part goes straight to disk, chunk by chunk, size-limited."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from .checks.names import filename_problem, text_problem

MAX_FORM_BYTES = 64 * 1024  # part headers and text fields, which are held in memory, of one request
# What a multipart request may hold besides its file: MAX_FORM_BYTES, and as much again for the boundary lines
MULTIPART_OVERHEAD = 2 * MAX_FORM_BYTES


class UploadTooLarge(Exception):
    """The upload passed the configured size limit."""


class BadUpload(ValueError):
    """The request is not a usable multipart upload; the message says why."""


class DiskFull(Exception):
    """The disk filled up (ENOSPC) while a file was written; the half-written file is gone."""


def stored_name(filename: str) -> str:
    """A fresh server-chosen file name that keeps the client's suffix when it is a plain one (``.jsonl``)."""
    suffix = Path(filename).suffix.lower()
    return uuid.uuid4().hex + (suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else "")


@dataclass
class Received:
    """A file received whole (server-chosen name), and the small text fields of the form it came in."""

    path: Path | None = None
    filename: str = ""
    bytes: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """MultipartParser callbacks: text fields in memory, the ``file`` part hashed into a file on disk."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory, self.limit = directory, limit
        self.upload = Received()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._buffer = bytearray()
        self._handle = None
        self._digest = hashlib.sha256()
        self._form_bytes = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
            "on_header_field": lambda d, s, e: self._add("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_header_value", d[s:e]),
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
        }

    def _add(self, attr: str, data: bytes) -> None:
        self._count_form_bytes(len(data))
        setattr(self, attr, getattr(self, attr) + data)

    def _count_form_bytes(self, size: int) -> None:
        """Everything but the file (headers, text fields) is kept in memory: MAX_FORM_BYTES in all."""
        self._form_bytes += size
        if self._form_bytes > MAX_FORM_BYTES:
            raise BadUpload(f"body: more than {MAX_FORM_BYTES} bytes of part headers and form fields")

    def _part_begin(self) -> None:
        self._headers, self._name, self._buffer = {}, "", bytearray()

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode(errors="replace")
        if self._name == "file" and b"filename" in options:
            if self._handle is not None:
                raise BadUpload("file: send one file per upload")
            self.upload.filename = os.path.basename(options[b"filename"].decode(errors="replace"))
            problem = filename_problem(self.upload.filename)
            if problem:  # before any byte is written
                raise BadUpload(problem)
            self.directory.mkdir(parents=True, exist_ok=True)
            self.upload.path = self.directory / f".{stored_name(self.upload.filename)}.part"
            self._handle = self.upload.path.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._handle is not None and self._name == "file":
            self.upload.bytes += len(chunk)
            if self.upload.bytes > self.limit:
                raise UploadTooLarge
            self._digest.update(chunk)
            self._handle.write(chunk)
        else:
            self._count_form_bytes(len(chunk))
            self._buffer += chunk

    def _part_end(self) -> None:
        if self._name != "file" or self._handle is None:
            value = self._buffer.decode(errors="replace")
            problem = text_problem("form field name", self._name) or text_problem(self._name, value)
            if problem:  # refused as soon as the field is whole: before the file when it comes first
                raise BadUpload(problem)
            self.upload.fields[self._name] = value
        elif not self._handle.closed:
            self._handle.close()
            self.upload.sha256 = self._digest.hexdigest()

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self.upload.path is not None:
            self.upload.path.unlink(missing_ok=True)


async def receive_upload(request: Request, directory: Path, limit: int) -> Received:
    """Parse a multipart request, streaming its ``file`` part into ``directory`` (a hidden ``.part`` file).

    Raises UploadTooLarge past ``limit`` bytes, BadUpload for a malformed request and DiskFull on a full disk;
    nothing is left on disk when it raises.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise BadUpload("body: expected multipart/form-data with a 'file' part")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise UploadTooLarge
    receiver = _Receiver(directory, limit)
    parser = MultipartParser(options[b"boundary"], receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (UploadTooLarge, BadUpload):
        receiver.discard()
        raise
    except OSError as err:
        receiver.discard()
        if err.errno == errno.ENOSPC:
            raise DiskFull from err
        raise
    except Exception as err:  # the parser's own errors: a malformed body
        receiver.discard()
        raise BadUpload(f"body: malformed multipart data ({err})") from None
    if receiver.upload.path is None:
        raise BadUpload("file: missing; send the dataset as the multipart field 'file'")
    return receiver.upload
