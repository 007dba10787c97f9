"""``mol client``: the REST API from a terminal, as the OpenAI and Together CLIs are (upload, submit, follow, list,
cancel, pause, resume, download here; datasets, models, checkpoints, sweeps, interpolations, evaluations,
webhooks and completions in client_resources.py). ``--json`` prints the API's answers for scripts.

Nothing of the server is imported (the HTTP client is api/client.py's; a spec file is read by the engine's one
reader, mol_engine/spec_file.py), so the client runs on a laptop against a remote MoL Studio. ``MOL_API_URL``
(default http://127.0.0.1:8000) and ``MOL_TOKEN`` name the server and the bearer token (or ``--url`` /
``--token``). A 4xx or 5xx prints the server's ``detail`` and exits 1; a server that cannot be reached prints why
and exits 1; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from api.client import DEFAULT_URL, FORMATS, PURPOSES, ApiError, MolClient, Progress, SseMessage
from mol_engine.spec_file import read_spec_file

from ..subcommand import Subparsers


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
    job = client.submit(resolve_spec(client, read_spec_file(path), path.parent))
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


def cmd_pause(client: MolClient, args: argparse.Namespace) -> int:
    job = client.pause(args.job)
    pausing = job["status"] == "running" and job.get("pause_requested")
    return emit(args, job, f"{job['id']} {job['status']}" + (" (saves a checkpoint at its next step, then pauses)"
                                                             if pausing else ""))


def cmd_resume(client: MolClient, args: argparse.Namespace) -> int:
    job = client.resume(args.job)
    return emit(args, job, f"{job['id']} {job['status']}")


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


def command(commands: Subparsers, name: str, run: Callable[[MolClient, argparse.Namespace], int],
            help: str) -> argparse.ArgumentParser:
    """A ``mol client`` command ``name`` that runs ``run(client, args)`` and takes ``--json``."""
    parser = commands.add_parser(name, help=help, description=help, parents=[JSON_FLAG])
    parser.set_defaults(client_func=run)
    return parser


def register(sub: Subparsers) -> None:
    """The ``client`` command group under the ``mol`` parser's subcommands."""
    from .client_resources import add_resource_commands  # they build on this module's helpers

    group = sub.add_parser("client", help="use a MoL Studio API from the terminal (MOL_API_URL, MOL_TOKEN): upload, "
                                          "submit, follow, list, cancel, pause, resume, download, datasets, models, "
                                          "checkpoints, sweeps, interpolations, evaluations, webhooks, complete, chat")
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
    p = command(commands, "pause", cmd_pause, "pause a job: a running one saves a checkpoint at its next step and "
                "frees its worker (resume continues from it)")
    p.add_argument("job")
    p = command(commands, "resume", cmd_resume, "resume a paused job: it goes back to the queue and continues from "
                "the checkpoint of its pause")
    p.add_argument("job")
    p = command(commands, "download", cmd_download, "download a checkpoint as .tar.gz (progress on stderr); prints "
                "its path")
    p.add_argument("job")
    p.add_argument("checkpoint", metavar="STEP|best", help="step-N, N, or best")
    p.add_argument("--format", choices=tuple(FORMATS), default="full",
                   help="full (the whole model; a LoRA job's merged into its base, the same as merged) or adapter")
    p.add_argument("-o", "--output", help="file or directory to write (default: the server's file name here)")
    add_resource_commands(commands)

