"""``mol client`` commands for the rest of the API (docs/api.md): datasets, models, checkpoints, sweeps,
interpolations, task evaluations, webhooks and completions. Each prints a table or a line, or with ``--json`` the
API's answer; client.py holds the job commands, the helpers these build on and the ``client`` group they join.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from api.client import ApiError, MolClient, checked, human_bytes
from mol_engine.spec_file import parse_grid, read_spec_file

from ..subcommand import Subparsers
from .client import command, emit, say, table

# --- datasets -----------------------------------------------------------------------------------------------------


def datasets_table(datasets: list[dict[str, Any]]) -> str:
    """Datasets as a table, newest first as the API lists them."""
    return table(("ID", "PURPOSE", "FILENAME", "DOCUMENTS", "TOKENS", "BYTES", "CREATED"),
                 [(d["id"], d["purpose"], d["filename"], d["documents"], d["approx_tokens"], d["bytes"],
                   d["created_at"]) for d in datasets])


def cmd_datasets_list(client: MolClient, args: argparse.Namespace) -> int:
    datasets = client.datasets()
    return emit(args, datasets, lambda: datasets_table(datasets))


def cmd_datasets_get(client: MolClient, args: argparse.Namespace) -> int:
    dataset = client.request("GET", f"/v1/datasets/{quote(args.dataset, safe='')}")
    stores = [f"token store: {s['tokenizer']}, {s['tokens']} tokens of {s['documents']} documents ({s['dtype']})"
              for s in dataset.get("token_stores") or []]
    return emit(args, dataset, lambda: "\n".join([datasets_table([dataset]), f"sha256 {dataset['sha256']}", *stores]))


def cmd_datasets_preview(client: MolClient, args: argparse.Namespace) -> int:
    preview = client.request("GET", f"/v1/datasets/{quote(args.dataset, safe='')}/preview", params={"n": args.n})

    def text() -> str:
        parts = [datasets_table([preview["dataset"]])]
        for i, doc in enumerate(preview["documents"], 1):
            cut = f" (first {len(doc['text'])} of {doc['chars']} characters)" if doc["chars"] > len(doc["text"]) else ""
            parts.append(f"--- document {i}{cut}\n{doc['text']}")
        return "\n".join(parts)

    return emit(args, preview, text)


def cmd_datasets_delete(client: MolClient, args: argparse.Namespace) -> int:
    client.request("DELETE", f"/v1/datasets/{quote(args.dataset, safe='')}")
    return emit(args, {"id": args.dataset, "deleted": True}, f"deleted {args.dataset}")


# --- models and checkpoints ---------------------------------------------------------------------------------------

def model_kind(model: dict[str, Any]) -> str:
    """``base`` or ``checkpoint`` (``JOB:step-N``), from the listed kind, else from the id's form."""
    return model.get("kind") or ("checkpoint" if ":" in model["id"] else "base")


def models_table(models: list[dict[str, Any]]) -> str:
    return table(("ID", "KIND", "TYPE"), [(m["id"], model_kind(m), m.get("model_type")) for m in models])


def cmd_models_list(client: MolClient, args: argparse.Namespace) -> int:
    models = client.models(checkpoints=args.checkpoints)
    return emit(args, models, lambda: models_table(models))


def get_model(client: MolClient, name: str) -> dict[str, Any]:
    """GET /v1/models/{name} where the server has it, else the model of that id in the list (checkpoints too)."""
    try:
        return client.request("GET", f"/v1/models/{quote(name, safe='')}")
    except ApiError as err:
        if err.status not in (404, 405):
            raise
    for model in client.models(checkpoints=True):
        if model["id"] == name:
            return model
    raise ApiError(404, f"model '{name}' not found (mol client models list --checkpoints)")


def cmd_models_get(client: MolClient, args: argparse.Namespace) -> int:
    model = get_model(client, args.model)
    return emit(args, model, lambda: models_table([model]))


def cmd_checkpoints(client: MolClient, args: argparse.Namespace) -> int:
    listed = client.request("GET", f"/v1/jobs/{quote(args.job, safe='')}/checkpoints")
    rows = [(c["name"], c["step"], c["kind"], c["bytes"], "best" if c.get("best") else "") for c in listed]
    return emit(args, listed, lambda: table(("NAME", "STEP", "KIND", "BYTES", "BEST"), rows))


# --- sweeps -------------------------------------------------------------------------------------------------------

def sweep_body(client: MolClient, path: Path, grid: list[str], name: str | None) -> dict[str, Any]:
    """POST /v1/sweeps's body from a file holding ``base`` and ``grid`` (a sweep) or a job spec (the base, with
    ``--grid``), the base's datasets resolved as ``submit`` resolves them."""
    from .client_refs import resolve_spec

    loaded = read_spec_file(path)
    body = dict(loaded) if "base" in loaded and "grid" in loaded else {"base": loaded, "grid": {}}
    body["grid"] = dict(body["grid"] or {}) | parse_grid(grid)
    if not body["grid"]:
        raise ValueError("grid: give the values to vary with --grid KEY=V1,V2 (or a 'grid' in the file)")
    body["base"] = resolve_spec(client, body["base"], path.parent)
    return body | ({"name": name} if name else {})


def sweep_jobs_table(sweep: dict[str, Any]) -> str:
    """A sweep's jobs, best domain gain first, with their grid point and place on the frontier."""
    keys = list(sweep["grid"])
    return table(("ID", "STATUS", *(k.upper() for k in keys), "GAIN", "DRIFT", "FRONTIER"),
                 [(j["id"], j["status"], *(j["values"].get(k) for k in keys), j.get("gain"), j.get("drift"),
                   "*" if j.get("on_frontier") else "") for j in sweep["data"]])


def cmd_sweeps_create(client: MolClient, args: argparse.Namespace) -> int:
    sweep = client.request("POST", "/v1/sweeps", json=sweep_body(client, Path(args.spec), args.grid, args.name))
    return emit(args, sweep, lambda: f"{sweep['id']}\n{sweep_jobs_table(sweep)}")


def cmd_sweeps_list(client: MolClient, args: argparse.Namespace) -> int:
    listed = client.request("GET", "/v1/sweeps", params={"limit": args.limit})
    rows = [(s["id"], s["name"], s["jobs"], ", ".join(f"{n} {k}" for k, n in sorted(s["statuses"].items())),
             s["created_at"]) for s in listed["data"]]
    return emit(args, listed, lambda: table(("ID", "NAME", "JOBS", "STATUSES", "CREATED"), rows))


def cmd_sweeps_get(client: MolClient, args: argparse.Namespace) -> int:
    sweep = client.request("GET", f"/v1/sweeps/{quote(args.sweep, safe='')}")
    return emit(args, sweep, lambda: f"{sweep['id']}  {sweep['name']}\n{sweep_jobs_table(sweep)}")


# --- interpolations and task evaluations --------------------------------------------------------------------------

def rows_table(rows: list[dict[str, Any]]) -> str:
    """Result rows (dicts) as a table with a column for every key any row has, in first-seen order."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return table(tuple(k.upper() for k in keys), [tuple(row.get(k) for k in keys) for row in rows])


def results_text(results: list[dict[str, Any]], what: Callable[[dict[str, Any]], str]) -> str:
    """Each result's heading (what, when) and its rows, or its error."""
    if not results:
        return "none yet (a queued one appears once a worker has run it)"
    blocks = []
    for result in results:
        body = rows_table(result["rows"]) if result.get("rows") else f"error: {result.get('error')}"
        blocks.append(f"{what(result)}  {result['created_at']}\n{body}")
    return "\n\n".join(blocks)


def queued_text(queued: dict[str, Any]) -> str:
    return f"{queued['id']} {queued['status']}" + (" (its result: the list command)" if queued["status"] == "done"
                                                   else " (a worker runs it; the list command shows the result)")


def cmd_interpolations_create(client: MolClient, args: argparse.Namespace) -> int:
    body = {"checkpoint": args.checkpoint} | ({"alphas": args.alphas} if args.alphas else {})
    queued = client.request("POST", f"/v1/jobs/{quote(args.job, safe='')}/interpolations", json=body)
    return emit(args, queued, lambda: queued_text(queued))


def cmd_interpolations_list(client: MolClient, args: argparse.Namespace) -> int:
    listed = client.request("GET", f"/v1/jobs/{quote(args.job, safe='')}/interpolations")
    return emit(args, listed, lambda: results_text(listed, lambda r: f"{r['checkpoint']} with the base"))


def cmd_evaluations_create(client: MolClient, args: argparse.Namespace) -> int:
    from .client_refs import References

    task = References(client, Path.cwd()).dataset_id(args.task, "task", "task")
    body = {"task": task} | ({"checkpoints": args.checkpoints} if args.checkpoints else {})
    queued = client.request("POST", f"/v1/jobs/{quote(args.job, safe='')}/evaluations", json=body)
    return emit(args, queued, lambda: queued_text(queued))


def cmd_evaluations_list(client: MolClient, args: argparse.Namespace) -> int:
    listed = client.request("GET", f"/v1/jobs/{quote(args.job, safe='')}/evaluations")
    return emit(args, listed, lambda: results_text(listed, lambda r: f"{r.get('filename') or r['task']} "
                                                                     f"({r.get('kind') or 'task'})"))


# --- webhooks -----------------------------------------------------------------------------------------------------

def cmd_webhooks_create(client: MolClient, args: argparse.Namespace) -> int:
    hook = client.request("POST", "/v1/webhooks", json={"url": args.endpoint, "events": args.events})
    say("keep the secret: it signs every delivery and is never shown again")
    return emit(args, hook, f"{hook['id']}\nsecret: {hook['secret']}")


def cmd_webhooks_list(client: MolClient, args: argparse.Namespace) -> int:
    hooks = client.request("GET", "/v1/webhooks")
    rows = [(h["id"], h["url"], ",".join(h["events"] or ["all"]), h["created_at"]) for h in hooks]
    return emit(args, hooks, lambda: table(("ID", "URL", "EVENTS", "CREATED"), rows))


def cmd_webhooks_delete(client: MolClient, args: argparse.Namespace) -> int:
    client.request("DELETE", f"/v1/webhooks/{quote(args.webhook, safe='')}")
    return emit(args, {"id": args.webhook, "deleted": True}, f"deleted {args.webhook}")


def cmd_webhooks_deliveries(client: MolClient, args: argparse.Namespace) -> int:
    listed = client.request("GET", f"/v1/webhooks/{quote(args.webhook, safe='')}/deliveries",
                            params={"limit": args.limit})
    last = [(d["attempts_log"] or [{}])[-1] for d in listed]
    rows = [(d["id"], d["event_type"], d.get("job_id"), d["status"], d["attempts"], a.get("error") or a.get("outcome"),
             d["created_at"]) for d, a in zip(listed, last, strict=True)]
    return emit(args, listed, lambda: table(("ID", "EVENT", "JOB", "STATUS", "ATTEMPTS", "LAST", "CREATED"), rows))


# --- completions --------------------------------------------------------------------------------------------------

def stream_chunks(client: MolClient, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The JSON chunks of a streamed completion, until ``data: [DONE]``."""
    with client.http.stream("POST", path, json=body | {"stream": True}) as response:
        checked(response)
        for line in response.iter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)


def completion_body(args: argparse.Namespace) -> dict[str, Any]:
    body = {"model": args.model, "max_tokens": args.max_tokens, "temperature": args.temperature}
    return body | ({"stop": args.stop} if args.stop else {}) | ({"seed": args.seed} if args.seed is not None else {})


def run_completion(client: MolClient, args: argparse.Namespace, path: str, body: dict[str, Any],
                   text_of: Callable[[dict[str, Any]], str | None]) -> int:
    """POSTs ``body`` to ``path`` and prints the text (``text_of(choice)``); with ``--stream`` each piece as it
    comes (``--json``: each chunk, one a line)."""
    if not args.stream:
        answer = client.request("POST", path, json=body)
        return emit(args, answer, text_of(answer["choices"][0]))
    for chunk in stream_chunks(client, path, body):
        if args.json:
            print(json.dumps(chunk), flush=True)
        elif chunk.get("choices"):
            print(text_of(chunk["choices"][0]) or "", end="", flush=True)
    if not args.json:
        print()
    return 0


def cmd_complete(client: MolClient, args: argparse.Namespace) -> int:
    return run_completion(client, args, "/v1/completions", completion_body(args) | {"prompt": args.prompt},
                          lambda choice: choice.get("text"))


def cmd_chat(client: MolClient, args: argparse.Namespace) -> int:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.message}]
    return run_completion(client, args, "/v1/chat/completions", completion_body(args) | {"messages": messages},
                          lambda choice: (choice.get("message") or choice.get("delta") or {}).get("content"))


# --- usage --------------------------------------------------------------------------------------------------------


def usage_text(usage: dict[str, Any]) -> str:
    """Usage by day as a table, then the totals, the storage and today's use against the limits."""
    limits, storage = usage["limits"], usage["storage"]
    days = table(("DAY (UTC)", "TOKENS", "ACCELERATOR-HOURS", "JOBS"),
                 [(d["day"], d["tokens"], round(d["accelerator_hours"], 3), d["jobs"]) for d in usage["days"]])
    return "\n".join([
        days if usage["days"] else f"no usage from {usage['from_day']} to {usage['to_day']}",
        f"total: {usage['tokens']} tokens, {usage['accelerator_hours']:.3f} accelerator-hours",
        f"storage: {human_bytes(storage['total_bytes'])} (datasets {human_bytes(storage['datasets_bytes'])}, runs "
        f"{human_bytes(storage['runs_bytes'])})",
        f"today ({limits['today']}): {limits['accelerator_hours_today']:.3f} of {limits['gpu_hours_per_day']:g} "
        f"accelerator-hours; storage {limits['storage_gb_used']:.3f} of {limits['storage_gb']:g} GB"])


def cmd_usage(client: MolClient, args: argparse.Namespace) -> int:
    usage = client.usage(args.first, args.last)
    return emit(args, usage, lambda: usage_text(usage))


# --- the parser ---------------------------------------------------------------------------------------------------

def _group(commands: Subparsers, name: str, help: str) -> Subparsers:
    return commands.add_parser(name, help=help, description=help).add_subparsers(dest=f"{name}_command",
                                                                                 required=True)


def _csv(kind):
    """An argparse type: a comma-separated list of ``kind``."""
    return lambda text: [kind(v.strip()) for v in text.split(",") if v.strip()]


def add_resource_commands(commands: Subparsers) -> None:
    """The resource commands (``datasets list``, ``sweeps create``...) under ``mol client``."""
    sub = _group(commands, "datasets", "your datasets: list, get, preview, delete")
    command(sub, "list", cmd_datasets_list, "list your datasets, newest first")
    command(sub, "get", cmd_datasets_get, "one dataset, with its sha256 and token stores").add_argument("dataset")
    p = command(sub, "preview", cmd_datasets_preview, "a dataset's first documents")
    p.add_argument("dataset")
    p.add_argument("-n", type=int, default=5, help="how many documents (1 to 50; default %(default)s)")
    command(sub, "delete", cmd_datasets_delete, "delete a dataset (not while an active job uses it)").add_argument(
        "dataset")
    sub = _group(commands, "models", "the base models on offer, and your checkpoints")
    command(sub, "list", cmd_models_list, "list the base models").add_argument(
        "--checkpoints", action="store_true", help="with your checkpoints (JOB:step-N), which completions take")
    command(sub, "get", cmd_models_get, "one model by id").add_argument("model")
    sub = _group(commands, "checkpoints", "a job's checkpoints (download one with `download`)")
    command(sub, "list", cmd_checkpoints, "list a job's checkpoints: step, kind, size, best").add_argument("job")
    sub = _group(commands, "sweeps", "sweeps: a base spec and a grid, one job per point")
    p = command(sub, "create", cmd_sweeps_create, "create a sweep from a spec file (the base) and --grid, or from a "
                "file holding base and grid; datasets as `submit` takes them")
    p.add_argument("spec")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values of one field to vary "
                   "(ratio, kl_weight, lr, method); repeat for several")
    p.add_argument("--name", help="the sweep's name (default: the base spec's)")
    command(sub, "list", cmd_sweeps_list, "list your sweeps, newest first").add_argument("--limit", type=int,
                                                                                         default=50)
    command(sub, "get", cmd_sweeps_get, "a sweep's jobs, best gain first, and its frontier").add_argument("sweep")
    sub = _group(commands, "interpolations", "models between the base and a checkpoint, evaluated on a worker")
    p = command(sub, "create", cmd_interpolations_create, "queue an interpolation of a job's checkpoint")
    p.add_argument("job")
    p.add_argument("--checkpoint", default="best", help="step-N or best (default)")
    p.add_argument("--alphas", type=_csv(float), help="comma-separated α in [0, 1] (default: the server's)")
    command(sub, "list", cmd_interpolations_list, "a job's interpolations and their rows").add_argument("job")
    sub = _group(commands, "evaluations", "task evaluations (lm-eval) of a job's checkpoints and base")
    p = command(sub, "create", cmd_evaluations_create, "queue a task evaluation")
    p.add_argument("job")
    p.add_argument("task", help="a task dataset: its id, a local file (uploaded unless stored) or its file name")
    p.add_argument("--checkpoints", type=_csv(str), help="comma-separated base, best, step-N (default: all)")
    command(sub, "list", cmd_evaluations_list, "a job's task evaluations and their rows").add_argument("job")
    sub = _group(commands, "webhooks", "endpoints that receive your jobs' events")
    p = command(sub, "create", cmd_webhooks_create, "add an endpoint; prints its id and signing secret (once)")
    p.add_argument("endpoint", metavar="URL", help="the https URL that receives the signed POSTs")  # not --url's dest
    p.add_argument("--events", type=_csv(str), help="comma-separated event types (default: all)")
    command(sub, "list", cmd_webhooks_list, "list your endpoints")
    command(sub, "delete", cmd_webhooks_delete, "delete an endpoint and its delivery log").add_argument("webhook")
    p = command(sub, "deliveries", cmd_webhooks_deliveries, "an endpoint's deliveries, newest first")
    p.add_argument("webhook")
    p.add_argument("--limit", type=int, default=50)
    p = command(commands, "usage", cmd_usage, "your tokens and accelerator-hours by UTC day, your storage, and "
                "today's use against your limits (GET /v1/usage)")
    p.add_argument("--from", dest="first", metavar="YYYY-MM-DD", help="first day (default: 29 days before --to)")
    p.add_argument("--to", dest="last", metavar="YYYY-MM-DD", help="last day (default: today, UTC)")
    for name, run, text, help in (("complete", cmd_complete, "prompt", "complete a prompt (POST /v1/completions)"),
                                  ("chat", cmd_chat, "message", "a chat reply (POST /v1/chat/completions)")):
        p = command(commands, name, run, help)
        p.add_argument("model", help="a base model or a checkpoint (JOB:step-N, JOB:best): models list --checkpoints")
        p.add_argument(text)
        if name == "chat":
            p.add_argument("--system", help="a system message first")
        p.add_argument("--max-tokens", type=int, default=64)
        p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
        p.add_argument("--stop", action="append", help="a stop sequence (repeat for several)")
        p.add_argument("--seed", type=int)
        p.add_argument("--stream", action="store_true", help="print the text as it is generated")
