"""``mol client``: the REST API from a terminal, as the OpenAI and Together CLIs are (upload, submit, follow, list,
cancel, download here; datasets, models, checkpoints, sweeps, interpolations, evaluations, webhooks and completions
in api/client_commands.py). ``--json`` prints the API's answers for scripts.

Only httpx, PyYAML and the standard library: nothing of the server is imported, so the client runs on a laptop
against a remote MoL Studio. ``MOL_API_URL`` (default http://127.0.0.1:8000) and ``MOL_TOKEN`` name the server and
the bearer token (or ``--url`` / ``--token``). A 4xx or 5xx prints the server's ``detail`` and exits 1; a server
that cannot be reached prints why and exits 1; never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
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
from mol_engine.spec_file import read_spec_file

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


def load_spec(path: Path) -> dict[str, Any]:
    """A job spec file, YAML or JSON (JSON is YAML), as a mapping, read as `mol train` reads it (``ratio: 4:1``
    stays "4:1"); ValueError naming the file when it is not one."""
    return read_spec_file(path)


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


# --- the commands -------------------------------------------------------------------------------------------------

def event_line(message: SseMessage) -> str:
    """One line for one SSE message of a job: a metric's step and values, an event's time, kind and message."""
    data = message.data or {}
    if message.event == "metric":
        values = " ".join(f"{k}={format_value(v)}" for k, v in data.items() if k not in ("seq", "step"))
        return f"step {data.get('step')}  {values}"
    if message.event == "end":
        return f"job ended: {data.get('status')}"
    return f"{data.get('created_at', '')}  {data.get('kind')}: {data.get('message')}"


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """``rows`` under ``header`` as aligned text columns (None shown as -, floats to 4 significant digits)."""
    cells = [header, *[tuple("-" if c is None else format_value(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    """Jobs as an aligned text table, newest first as the API lists them."""
    return table(("ID", "NAME", "STATUS", "METHOD", "STEP", "CREATED"),
                 [(j["id"], j["name"], j["status"], j.get("method") or "-", f"{j['step']}/{j['max_steps']}",
                   j["created_at"]) for j in jobs])


def emit(args: argparse.Namespace, answer: Any, text: str | Callable[[], str]) -> int:
    """Prints the API's ``answer`` as JSON with ``--json`` (for scripts), else ``text``; returns 0."""
    print(json.dumps(answer, indent=2) if getattr(args, "json", False) else (text if isinstance(text, str) else
                                                                             text()))
    return 0


def say(message: str) -> None:
    """A note for the person at the terminal, on stderr (stdout stays the answer, for scripts)."""
    print(message, file=sys.stderr, flush=True)


def upload_file(client: MolClient, path: Path, purpose: str) -> dict[str, Any]:
    """The owner's dataset of ``path``'s bytes and ``purpose``: the stored one when the same file (by sha256) is there
    already, with nothing sent; else the file uploaded, with a progress bar on stderr."""
    stored, digest = client.stored_copy(path, purpose)
    if stored is not None:
        say(f"{path.name}: the same file (sha256 {digest[:12]}…) is your dataset {stored['id']} already; not sent")
        return stored
    bar = Progress(f"upload {path.name}", path.stat().st_size)
    dataset = client.upload(path, purpose, bar.advance, sha256=digest)
    bar.done()
    if client.existing:
        say(f"{path.name}: the server had the same file stored as {client.existing}")
    return dataset


def cmd_upload(client: MolClient, args: argparse.Namespace) -> int:
    dataset = upload_file(client, Path(args.file), args.purpose)
    return emit(args, dataset, dataset["id"])


def cmd_submit(client: MolClient, args: argparse.Namespace) -> int:
    from .client_refs import resolve_spec

    path = Path(args.spec)
    job = client.submit(resolve_spec(client, load_spec(path), path.parent))
    return emit(args, job, job["id"])


def cmd_follow(client: MolClient, args: argparse.Namespace) -> int:
    status = None
    for message in client.follow(args.job):
        line = json.dumps({"event": message.event, "id": message.id, "data": message.data})
        print(line if args.json else event_line(message), flush=True)
        if message.event == "end":
            status = (message.data or {}).get("status")
    return 0 if status == "succeeded" else 1


def cmd_list(client: MolClient, args: argparse.Namespace) -> int:
    jobs = client.list_jobs(args.limit)
    return emit(args, jobs, lambda: jobs_table(jobs))


def cmd_cancel(client: MolClient, args: argparse.Namespace) -> int:
    job = client.cancel(args.job)
    return emit(args, job, f"{job['id']} {job['status']}" + (" (stops at its next step)"
                                                             if job["status"] == "running" else ""))


def cmd_download(client: MolClient, args: argparse.Namespace) -> int:
    bars: list[Progress] = []

    def progress_for(total: int | None) -> Callable[[int], None]:
        bars.append(Progress(f"download {args.checkpoint}", total))
        return bars[-1].advance

    path = client.download(args.job, args.checkpoint, args.format, Path(args.output) if args.output else None,
                           progress_for)
    for bar in bars:
        bar.done()
    return emit(args, {"path": str(path), "bytes": path.stat().st_size}, str(path))


def run_command(args: argparse.Namespace) -> int:
    """Runs one ``mol client`` command; 1 with the server's detail for an error answer or an unreachable server,
    2 for a local file that cannot be read."""
    if not args.token:
        print("warning: no token (set MOL_TOKEN or pass --token); the API will answer 401", file=sys.stderr)
    client = MolClient(args.url, args.token)
    try:
        return args.client_func(client, args)
    except ApiError as err:
        print(f"error: {err.detail}" + (f" (HTTP {err.status})" if err.status else ""), file=sys.stderr)
        return 1
    except httpx.HTTPError as err:
        print(f"error: cannot talk to {args.url}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:  # ValueError: a spec file that is not one too (SpecFileError)
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        client.close()


JSON_FLAG = argparse.ArgumentParser(add_help=False)  # --json after a command too (default: the group's)
JSON_FLAG.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print the API's JSON answer instead of text, for scripts")


def command(commands: argparse._SubParsersAction, name: str, run: Callable[[MolClient, argparse.Namespace], int],
            help: str) -> argparse.ArgumentParser:
    """A ``mol client`` command ``name`` that runs ``run(client, args)`` and takes ``--json``."""
    parser = commands.add_parser(name, help=help, description=help, parents=[JSON_FLAG])
    parser.set_defaults(client_func=run)
    return parser


def add_client_parser(sub: argparse._SubParsersAction) -> None:
    """The ``client`` command group under the ``mol`` parser's subcommands."""
    from .client_commands import add_resource_commands  # they build on this module's client and helpers

    group = sub.add_parser("client", help="use a MoL Studio API from the terminal (MOL_API_URL, MOL_TOKEN): upload, "
                                          "submit, follow, list, cancel, download, datasets, models, checkpoints, "
                                          "sweeps, interpolations, evaluations, webhooks, complete, chat")
    group.add_argument("--url", default=os.environ.get("MOL_API_URL", DEFAULT_URL),
                       help="the API's base URL (default: MOL_API_URL, else %(default)s)")
    group.add_argument("--token", default=os.environ.get("MOL_TOKEN"), help="bearer token (default: MOL_TOKEN)")
    group.add_argument("--json", action="store_true", help="print the API's JSON answers instead of text")
    group.set_defaults(func=run_command)
    commands = group.add_subparsers(dest="client_command", required=True)
    p = command(commands, "upload", cmd_upload, "upload a JSONL/Parquet/text file in parts (progress on stderr; a "
                "file you stored before, by sha256, is not sent again); prints the dataset id")
    p.add_argument("file")
    p.add_argument("--purpose", choices=PURPOSES, required=True)
    p = command(commands, "submit", cmd_submit, "submit a job spec file (YAML or JSON); its datasets may be ids, "
                "local files (uploaded unless stored), names of your datasets, or demo; prints the job id")
    p.add_argument("spec")
    p = command(commands, "follow", cmd_follow, "print a job's events and metrics live, one line each, until it "
                "ends (exit 0 if it succeeded); --json: one JSON object a line")
    p.add_argument("job")
    p = command(commands, "list", cmd_list, "list your jobs, newest first")
    p.add_argument("--limit", type=int, default=50)
    p = command(commands, "cancel", cmd_cancel, "cancel a job")
    p.add_argument("job")
    p = command(commands, "download", cmd_download, "download a checkpoint as .tar.gz (progress on stderr); prints "
                "its path")
    p.add_argument("job")
    p.add_argument("checkpoint", metavar="STEP|best", help="step-N, N, or best")
    p.add_argument("--format", choices=tuple(FORMATS), default="full",
                   help="full (the whole model; a LoRA job's merged into its base, the same as merged) or adapter")
    p.add_argument("-o", "--output", help="file or directory to write (default: the server's file name here)")
    add_resource_commands(commands)


def main(argv: list[str] | None = None) -> int:
    """``python -m api.client COMMAND …``, the same as ``mol client COMMAND …`` without loading the engine (torch,
    transformers): it starts in a fraction of a second."""
    parser = argparse.ArgumentParser(prog="mol")
    add_client_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["client", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
