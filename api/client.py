"""The MoL Studio REST API's Python client (``MolClient``, over httpx), which ``mol client``
(mol_cli/commands/client.py) drives: resumable uploads, jobs, their live event stream and checkpoint downloads, and
a terminal progress bar.

Only httpx and the standard library: nothing of the server is imported, so the client runs on a laptop against a
remote MoL Studio.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from mol_engine.run_dir import step_name

DEFAULT_URL = "http://127.0.0.1:8000"
PART_BYTES = 8 * 2**20  # the dashboard's part size (docs/api.md: 8 to 64 MiB work well)
CHUNK_BYTES = 1 << 16
FOLLOW_RETRIES = 5  # reconnections in a row before `follow` gives up on a dropped stream
FOLLOW_SILENCE_S = 60.0  # a stream silent this long (the server pings every 15 s) is dead: reconnect
PURPOSES = ("domain", "general", "eval", "prompts", "task")  # prompts: sample_prompts; task: lm-eval tasks
EXISTING_HEADER = "Mol-Existing-Dataset"  # api/dataset_store.py's: an upload answered with a dataset stored before
FORMATS = {"full": "merged", "merged": "merged", "adapter": "adapter"}  # the CLI's word -> the API's ?format=


class ApiError(Exception):
    """An answer of status >= 400: its status and the server's ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def error_detail(response: httpx.Response) -> str:
    """The ``detail`` of an error answer (the API's ``{"detail": ...}``), else its text or reason."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else (response.text.strip() or response.reason_phrase)


def checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        response.read()  # a streamed answer's body, for its detail
        raise ApiError(response.status_code, error_detail(response))
    return response


class Progress:
    """A one-line progress bar on ``out`` (stderr): label, bar and percent when the total is known, bytes, rate.
    On a terminal it is redrawn in place at most every ``every`` seconds; elsewhere (a log file) only ``done``
    writes it, once, with the final figures."""

    def __init__(self, label: str, total: int | None, out: TextIO | None = None, every: float = 0.2) -> None:
        self.label, self.total, self.out, self.every = label, total, out or sys.stderr, every
        self.live = self.out.isatty()
        self.done_bytes, self.started, self.drawn = 0, time.monotonic(), 0.0

    def advance(self, count: int) -> None:
        self.done_bytes += count
        if self.live and time.monotonic() - self.drawn >= self.every:
            self._draw()

    def done(self) -> None:
        """The transfer is whole: its size is the total (a download's was estimated from the listed model size)."""
        self.total = self.done_bytes
        self._draw()
        self.out.write("\n")
        self.out.flush()

    def line(self) -> str:
        rate = self.done_bytes / max(time.monotonic() - self.started, 1e-6)
        amount = human_bytes(self.done_bytes)
        if self.total:
            share = min(self.done_bytes / self.total, 1.0)
            filled = int(share * 30)
            amount = f"[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%} {amount} of {human_bytes(self.total)}"
        return f"{self.label} {amount}, {human_bytes(rate)}/s"

    def _draw(self) -> None:
        self.drawn = time.monotonic()
        self.out.write(("\r" + self.line() + "\x1b[K") if self.live else self.line())
        self.out.flush()


def human_bytes(count: float) -> str:
    """``count`` bytes in the largest binary unit that keeps it at 1 or more: 812 B, 3.4 KiB, 1.2 GiB."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while abs(count) >= 1024 and power < len(units) - 1:
        count, power = count / 1024, power + 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"


@dataclass
class SseMessage:
    event: str
    id: str | None
    data: Any


def sse_messages(lines: Iterator[str]) -> Iterator[SseMessage]:
    """The messages of a text/event-stream, its lines one by one (comments, the keep-alives, skipped)."""
    event, last_id, data = "message", None, []
    for line in lines:
        if not line:
            if data:
                text = "\n".join(data)
                yield SseMessage(event, last_id, json.loads(text) if text else None)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "id":
                last_id = value
            elif field == "data":
                data.append(value)


def filename_of(response: httpx.Response, fallback: str) -> str:
    """The file name of Content-Disposition (its last path part only), else ``fallback``."""
    found = re.search(r'filename="?([^";]+)"?', response.headers.get("content-disposition", ""))
    return Path(found.group(1)).name if found else fallback


def file_sha256(path: Path) -> str:
    """The hex sha256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def retry_once(call: Callable[[], Any]) -> Any:
    """``call()``, and once more after a dropped connection: for requests a repeat cannot double (a part sent to
    the same index, a job submitted with the same Idempotency-Key)."""
    try:
        return call()
    except httpx.TransportError:
        return call()


class MolClient:
    """The MoL Studio REST API (docs/api.md) over httpx; each method raises ApiError for an answer >= 400."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 600.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
        self.existing: str | None = None  # the last upload's dataset when the server had the same file stored

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> MolClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> Any:
        response = checked(self.http.request(method, path, **kwargs))
        return response.json() if response.content else None

    def upload(self, path: Path, purpose: str, progress: Callable[[int], None] = lambda _n: None,
               part_bytes: int = PART_BYTES, sha256: str | None = None) -> dict[str, Any]:
        """``path`` as a dataset through the resumable uploads API: create, send each part in order, complete (the
        server checks the whole file against ``sha256`` when given); a part cut off by a dropped connection is sent
        again once. Returns the Dataset: the owner's stored one when the server had the same file and purpose
        already (then ``self.existing`` is its id, else None)."""
        size = path.stat().st_size
        count = max(1, math.ceil(size / part_bytes))
        upload = self.request("POST", "/v1/uploads", json={"filename": path.name, "purpose": purpose, "bytes": size})
        with path.open("rb") as handle:
            for index in range(count):
                handle.seek(index * part_bytes)
                self._put_part(upload["id"], index, handle.read(part_bytes), progress)
        body = {"part_count": count} | ({"sha256": sha256} if sha256 else {})
        response = checked(self.http.post(f"/v1/uploads/{upload['id']}/complete", json=body))
        self.existing = response.headers.get(EXISTING_HEADER)
        return response.json()

    def datasets(self) -> list[dict[str, Any]]:
        """The owner's datasets, newest first."""
        return self.request("GET", "/v1/datasets")

    def stored_copy(self, path: Path, purpose: str) -> tuple[dict[str, Any] | None, str]:
        """(the owner's dataset of ``purpose`` holding the same bytes as ``path``, or None; the file's sha256)."""
        digest = file_sha256(path)
        same = [d for d in self.datasets() if d["sha256"] == digest and d["purpose"] == purpose]
        return (same[0] if same else None), digest

    def usage(self, first: str | None = None, last: str | None = None) -> dict[str, Any]:
        """GET /v1/usage: the owner's tokens and accelerator time by UTC day from ``first`` to ``last`` (YYYY-MM-DD;
        the server's defaults when None), their storage and their limits."""
        params = {key: value for key, value in (("from", first), ("to", last)) if value}
        return self.request("GET", "/v1/usage", params=params or None)

    def models(self, checkpoints: bool = False) -> list[dict[str, Any]]:
        """GET /v1/models as a list, whichever shape the server answers: a bare list, or OpenAI's list object
        (``{"object": "list", "data": [...]}``)."""
        listed = self.request("GET", "/v1/models", params={"include": "checkpoints"} if checkpoints else None)
        return listed["data"] if isinstance(listed, dict) else listed

    def _put_part(self, upload_id: str, index: int, part: bytes, progress: Callable[[int], None]) -> None:
        """One part, sent in chunks that each advance ``progress``; a dropped connection sends it once more (the
        same index replaces the part, so a retry never adds bytes twice) with the progress it had made undone."""
        url = f"/v1/uploads/{upload_id}/parts/{index}"
        sent = 0

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            for start in range(0, len(part), CHUNK_BYTES):
                chunk = part[start:start + CHUNK_BYTES]
                yield chunk
                sent += len(chunk)
                progress(len(chunk))

        def send() -> None:
            nonlocal sent
            progress(-sent)  # a retry: what the cut-off try counted is sent again
            sent = 0
            headers = {"Content-Length": str(len(part)), "Content-Type": "application/octet-stream"}
            self.request("PUT", url, content=chunks(), headers=headers)

        retry_once(send)

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /v1/jobs with an Idempotency-Key (one new key per call unless given): a retry of this call after a
        lost answer makes no second job."""
        key = idempotency_key or str(uuid.uuid4())
        return retry_once(lambda: self.request("POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": key}))

    def list_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/jobs", params={"limit": limit})["data"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")

    def pause(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/pause")

    def resume(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/jobs/{job_id}/resume")

    def follow(self, job_id: str, retries: int = FOLLOW_RETRIES) -> Iterator[SseMessage]:
        """The job's metric and event messages live, until its ``end`` message; after a dropped connection the
        stream (or one silent for FOLLOW_SILENCE_S, or one the server ended with an ``error`` event: its database
        unreachable) is opened again with ``Last-Event-ID``, so nothing is repeated or lost (``retries`` times in a
        row at most)."""
        last_id, failures = None, 0
        while True:
            headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                      timeout=httpx.Timeout(30.0, read=FOLLOW_SILENCE_S)) as response:
                    checked(response)
                    for message in sse_messages(response.iter_lines()):
                        if message.event == "error":  # the server gave up this stream, not the job: reconnect
                            break
                        failures = 0
                        last_id = message.id or last_id
                        yield message
                        if message.event == "end":
                            return
            except httpx.TransportError:
                pass
            failures += 1
            if failures > retries:
                raise ApiError(0, f"the event stream of job '{job_id}' dropped {failures} times in a row")
            time.sleep(min(2 ** failures * 0.25, 5.0))

    def download(self, job_id: str, name: str, format: str, out: Path | None, progress_for: Callable[[int | None],
                 Callable[[int], None]]) -> Path:
        """The checkpoint ``name`` (``step-N``, ``N`` or ``best``) as a .tar.gz at ``out`` (default the server's
        file name in the current directory; a directory: that name inside it). Written under a temporary name and
        renamed once whole. ``progress_for(total)`` gives the callback each chunk's size goes to; the total is
        the model's size as listed (the tarball is streamed without a length)."""
        name = step_name(int(name)) if name.isdigit() else name
        params = {"format": FORMATS[format]}
        with self.http.stream("GET", f"/v1/jobs/{job_id}/checkpoints/{name}/download", params=params) as response:
            checked(response)
            target = out or Path(filename_of(response, f"{job_id}-{name}.tar.gz"))
            if target.is_dir():
                target = target / filename_of(response, f"{job_id}-{name}.tar.gz")
            total = int(response.headers["content-length"]) if "content-length" in response.headers else None
            advance = progress_for(total or self._listed_bytes(job_id, name))
            partial = target.with_name(f".{target.name}.part")
            try:
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        handle.write(chunk)
                        advance(len(chunk))
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
        return target

    def _listed_bytes(self, job_id: str, name: str) -> int | None:
        for checkpoint in self.request("GET", f"/v1/jobs/{job_id}/checkpoints"):
            if checkpoint["name"] == name or (name == "best" and checkpoint.get("best")):
                return checkpoint["bytes"]
        return None
