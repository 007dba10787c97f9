"""Load on one API process over loopback, on PostgreSQL: slow clients must not stall anyone.

    python bench/api_load.py [--quick] [--slow 40] [--clients 20] [--window 60] [--streams 1000]
                             [--completion-clients 1 8] [--completion-tokens 64]

Starts `mol api` (one uvicorn process, a scratch PostgreSQL database, no workers, so jobs stay queued), then
1. ``--slow`` slow downloaders (a checkpoint of ``--checkpoint-mb`` random bytes, read 1 KiB at a time) and as
   many slow uploaders (half `POST /v1/datasets`, half a part of `/v1/uploads`, the body trickled in) connect
   and stay for the whole window;
2. meanwhile ``--clients`` clients submit jobs and poll them (GET the job, GET the list) back to back for
   ``--window`` seconds: submit p50/p99, poll p99, and every 5xx anyone got;
3. ``--streams`` SSE streams on one queued job are held: how many were served, and the API's CPU meanwhile;
4. alone, 1 and then 8 (``--completion-clients``) clients at once each stream a ``--completion-tokens`` completion
   (``POST /v1/completions``, ``stream: true``, greedy) from the demo model (the shared build in the demo cache,
   ``MOL_DEMO_CACHE``, built there if missing; --quick: the tiny model): first-token latency p50/p95, tokens/s per
   client after its first token, tokens/s of all clients together. Clients beyond ``MOL_GENERATION_THREADS`` (2)
   wait for a thread, so their first token comes later: the bound doing its job;
before all that, one ``--large-upload-mb`` upload: how much it raised the API's peak RSS;
5. the abuse mix (bench/abuse.py), on a second API with a worker and a database of its own: one owner sends
   oversized bodies (``--oversized-mb``, with and without a token), huge prompts (``--huge-prompt-chars``), a
   burst of ``--side-tasks`` interpolations and keeps dead webhook endpoints for ``--abuse-window`` seconds, while
   another owner submits and cancels jobs: 5xx (goal 0), the API's peak RSS growth (goal <= 100 MiB), the other
   owner's submit p99 (goal < 1 s), webhook delivery p99 (goal < 2 s) and its training job's wait for the worker.
Prints one JSON line ({"slow_clients_5xx": 0, "submit_p99_ms": ..., "sse_streams": ..., "completions": [...]})
and, unless --quick, writes the figures into docs/performance.md (section api_load). Everything runs on 127.0.0.1
and stops by itself; the full run takes about 3 minutes (and a few more the first time, to build the demo),
--quick well under one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import abuse
from report import replace_section
from slow_clients import SLOW_READ, TICK_S, TOKEN, Tally, slow_download, slow_upload

ROOT = Path(__file__).resolve().parents[1]
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
PROMPT = "The river runs past the stone garden, and in the morning"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


@contextlib.contextmanager
def scratch_database():
    """The URL of a new PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    import sqlalchemy

    name = f"mol_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def service_env(home: Path, model_dir: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The API's (and a worker's) environment: ``home``, the models, the database, the filesystem broker."""
    env = os.environ | {"MOL_HOME": str(home), "MOL_TOKENS": f"bench:{TOKEN}", "MOL_MODELS_DIR": str(model_dir),
                        "MOL_DEMO_MODEL": "false", "MOL_STREAM_POLL_S": "0.5", "MOL_DATABASE_URL": database_url}
    env.pop("MOL_BROKER_URL", None)
    return env | extra


def start_api(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mol_cli", "api", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API did not start")


def make_model(directory: Path) -> None:
    """A tiny Llama directory, so job specs validate against a real model id."""
    from transformers import LlamaForCausalLM

    from mol_engine.demo import build_tokenizer, tiny_llama_config

    tokenizer = build_tokenizer(["some text to learn a handful of merges from"] * 20, vocab_size=300)
    config = tiny_llama_config(len(tokenizer), hidden_size=16, num_layers=1, num_heads=1, intermediate_size=32)
    (directory / "tiny").mkdir(parents=True)
    LlamaForCausalLM(config).save_pretrained(directory / "tiny")
    tokenizer.save_pretrained(directory / "tiny")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), MiB."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def upload_peak_growth_mb(base: str, directory: Path, size_mb: int, pid: int) -> float:
    """How much a ``size_mb`` MiB dataset upload (multipart, then validated) raised the API's peak RSS."""
    path = directory / "large.jsonl"
    line = (json.dumps({"text": "a river runs under the stone bridge " * 7}) + "\n").encode()
    with path.open("wb") as out:
        for _ in range(size_mb * 2**20 // (len(line) * 1000)):
            out.write(line * 1000)
    before = peak_rss_mb(pid)
    with path.open("rb") as handle:  # streamed from the file: the client does not hold it either
        response = httpx.post(f"{base}/v1/datasets", headers=HEADERS, data={"purpose": "domain"},
                              files={"file": ("large.jsonl", handle)}, timeout=300)
    response.raise_for_status()
    path.unlink()
    return round(peak_rss_mb(pid) - before, 1)


def add_checkpoint(home: Path, job_id: str, size: int) -> str:
    """A checkpoint of step 1 of ``job_id`` holding ``size`` random bytes; its download path."""
    from store.settings import Settings

    checkpoint = Settings(home=home).run_dir(job_id).checkpoint(1)
    model = checkpoint / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    with (model / "weights.bin").open("wb") as out:
        for _ in range(size // 2**20):
            out.write(os.urandom(2**20))
    return f"/v1/jobs/{job_id}/checkpoints/{checkpoint.name}/download"


# ---------------------------------------------------------------- clients that submit and poll


@dataclass
class Timings:
    submit: list[float] = field(default_factory=list)
    poll: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


async def submit_and_poll(client: httpx.AsyncClient, spec: dict, until: float, timings: Timings) -> None:
    """Submit a job, GET it, GET the list; again until ``until``."""
    while time.monotonic() < until:
        started = time.perf_counter()
        response = await client.post("/v1/jobs", json=spec)
        timings.submit.append(time.perf_counter() - started)
        timings.statuses.append(response.status_code)
        if response.status_code != 201:
            continue
        for url in (f"/v1/jobs/{response.json()['id']}", "/v1/jobs?limit=20"):
            started = time.perf_counter()
            polled = await client.get(url)
            timings.poll.append(time.perf_counter() - started)
            timings.statuses.append(polled.status_code)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 if ordered else float("nan")


async def under_slow_clients(base: str, spec: dict, download: str, args: argparse.Namespace) -> dict:
    """Phases 1 and 2: the slow clients connect, the submitters run for the window, the slow clients finish."""
    stop = asyncio.Event()
    downloads, uploads, timings = Tally(), Tally(), Timings()
    started: list = []
    content = b"".join(json.dumps({"text": f"slow upload line {i}"}).encode() + b"\n"
                       for i in range(args.upload_kb * 1024 // 30))
    limits = httpx.Limits(max_connections=args.clients + args.slow + 10)
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=120, limits=limits) as client:
        slow = [asyncio.create_task(slow_download(base, download, stop, started, downloads)) for _ in range(args.slow)]
        # each upload's bytes differ (its first line), so none is answered as an already-stored twin
        slow += [asyncio.create_task(slow_upload(base, client, i % 2 == 1,
                                                 json.dumps({"text": f"uploader {i}"}).encode() + b"\n" + content,
                                                 stop, started, uploads))
                 for i in range(args.slow)]
        deadline = time.monotonic() + 120
        while len(started) < 2 * args.slow and time.monotonic() < deadline and not all(t.done() for t in slow):
            await asyncio.sleep(0.1)
        connected = len(started)
        until = time.monotonic() + args.window
        await asyncio.gather(*(submit_and_poll(client, spec, until, timings) for _ in range(args.clients)))
        stop.set()
        await asyncio.gather(*slow)
    return {
        "slow_clients": 2 * args.slow, "slow_clients_connected": connected,
        "slow_clients_5xx": downloads.server_errors + uploads.server_errors,
        "slow_clients_failed": len(downloads.failures) + len(uploads.failures),
        "slow_failures_sample": (downloads.failures + uploads.failures)[:3],
        "slow_uploads_completed": uploads.completed,
        "submit_p50_ms": round(percentile(timings.submit, 0.5), 1),
        "submit_p99_ms": round(percentile(timings.submit, 0.99), 1),
        "poll_p99_ms": round(percentile(timings.poll, 0.99), 1),
        "submissions": len(timings.submit), "submit_clients": args.clients,
        "clients_5xx": sum(1 for s in timings.statuses if s >= 500),
    }


async def hold_streams(base: str, job_id: str, count: int, window: float, pid: int) -> tuple[int, float]:
    """(streams connected, API CPU seconds used while ``count`` streams were held for ``window`` s)."""
    headers = HEADERS | {"Accept": "text/event-stream"}
    limits = httpx.Limits(max_connections=count + 10)
    connected = 0
    ready = asyncio.Event()

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120, limits=limits) as client:
        async def one() -> None:
            nonlocal connected
            async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                if response.status_code == 200:
                    connected += 1
                    if connected == count:
                        ready.set()
                    await asyncio.sleep(window * 3)

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        with contextlib.suppress(TimeoutError):  # measure whatever connected within a minute
            await asyncio.wait_for(ready.wait(), timeout=60)
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        used = cpu_seconds(pid) - before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return connected, used


# ---------------------------------------------------------------- the abuse mix


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """One Celery worker (as `mol worker` runs it) on the API's broker and database."""
    from api.service import worker_command
    from store.settings import Settings

    return subprocess.Popen(worker_command(Settings(), "bench"), env=env, cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def upload_corpora(base: str, token: str) -> dict[str, str]:
    """A domain, a general and an eval dataset of the owner of ``token``: purpose -> id."""
    headers = {"Authorization": f"Bearer {token}"}
    text = "".join(json.dumps({"text": f"{token} document {i} about rivers and stone"}) + "\n" for i in range(40))
    qa = "".join(json.dumps({"question": f"{i} + 1 =", "answer": str(i + 1)}) + "\n" for i in range(8))
    return {purpose: httpx.post(f"{base}/v1/datasets", headers=headers, data={"purpose": purpose},
                                files={"file": (f"{purpose}.jsonl", body)}, timeout=60).json()["id"]
            for purpose, body in (("domain", text), ("general", text), ("eval", qa))}


def tiny_spec(ids: dict[str, str], steps: int) -> dict:
    return {"base_model": "tiny", "domain_data": [ids["domain"]], "general_data": [ids["general"]],
            "eval_data": ids["eval"], "max_steps": steps, "eval_every": max(1, steps // 2),
            "save_every": max(1, steps // 2), "batch_size": 2, "seq_len": 16}


async def honest_owner(client: httpx.AsyncClient, spec: dict, until: float, timings: Timings,
                       cancels: dict[str, float]) -> None:
    """bench's loop: submit a job, GET it, cancel it (its webhook delivery is timed from the cancel's answer)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while time.monotonic() < until:
        started = time.perf_counter()
        response = await client.post("/v1/jobs", json=spec, headers=headers)
        timings.submit.append(time.perf_counter() - started)
        timings.statuses.append(response.status_code)
        if response.status_code != 201:
            continue
        job_id = response.json()["id"]
        started = time.perf_counter()
        polled = await client.get(f"/v1/jobs/{job_id}", headers=headers)
        timings.poll.append(time.perf_counter() - started)
        cancel = await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
        timings.statuses += [polled.status_code, cancel.status_code]
        cancels[job_id] = time.monotonic()
        await asyncio.sleep(0.2)


async def attacker(client: httpx.AsyncClient, spec: dict, until: float, args: argparse.Namespace,
                   outcomes: abuse.Outcomes) -> None:
    """mallory's loop: oversized bodies of each kind, huge prompts, and a cancelled job (a delivery to each of her
    dead endpoints), again until ``until``."""
    size = args.oversized_mb * abuse.MiB
    while time.monotonic() < until:
        await asyncio.gather(*(abuse.oversized_body(client, size, token, chunked, outcomes)
                               for token in (None, abuse.ATTACKER_TOKEN) for chunked in (False, True)),
                             abuse.huge_prompt(client, "tiny", args.huge_prompt_chars, outcomes),
                             abuse.huge_prompt(client, "tiny", 900_000, outcomes))
        _, status, _ = await abuse.submit_and_cancel(client, spec, abuse.ATTACKER_TOKEN)
        outcomes.add("cancelled_jobs", status)


async def abuse_window(base: str, specs: dict[str, dict], trained: str, args: argparse.Namespace) -> dict:
    """mallory's abuse beside bench's work for ``--abuse-window`` s; then bench's training job's wait for a worker
    while mallory's side tasks are queued."""
    outcomes, timings, cancels = abuse.Outcomes(), Timings(), {}
    with abuse.webhook_receiver() as (receiver, arrivals), abuse.dead_endpoint() as dead:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            dead_endpoints = await abuse.register_dead_webhooks(client, dead, outcomes)
            created = await client.post("/v1/webhooks", json={"url": receiver, "events": ["job.cancelled"]},
                                        headers=HEADERS)
            created.raise_for_status()
            until = time.monotonic() + args.abuse_window
            await asyncio.gather(abuse.side_task_burst(client, trained, args.side_tasks, outcomes),
                                 attacker(client, specs["mallory"], until, args, outcomes),
                                 *(honest_owner(client, specs["bench"], until, timings, cancels) for _ in range(4)))
            submitted = time.monotonic()
            training = await client.post("/v1/jobs", json=specs["bench_training"], headers=HEADERS)
            status = await abuse.wait_for(client, training.json()["id"], TOKEN, {"running", "succeeded", "failed"},
                                          timeout=300)
            queued_wait = time.monotonic() - submitted
        deadline = time.monotonic() + 30
        while len(arrivals.keys() & cancels.keys()) < len(cancels) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        delays = [arrivals[job] - at for job, at in cancels.items() if job in arrivals]
    return {"abuse_5xx": outcomes.server_errors + sum(1 for s in timings.statuses if s >= 500),
            "abuse_outcomes": outcomes.summary(), "abuse_dead_webhooks": dead_endpoints,
            "other_owner_submit_p99_ms": round(percentile(timings.submit, 0.99), 1),
            "other_owner_submissions": len(timings.submit),
            "other_owner_webhook_p99_ms": round(percentile(delays, 0.99), 1),
            "other_owner_webhooks_delivered": f"{len(delays)}/{len(cancels)}",
            "other_owner_queued_wait_s": round(queued_wait, 2), "other_owner_training_status": status}


def abuse_mix(tmp: Path, models: Path, args: argparse.Namespace) -> dict:
    """The abuse phase on an API and one worker of its own (a scratch database, a fresh MOL_HOME): figures of
    :func:`abuse_window` and the API's peak RSS growth over it."""
    with scratch_database() as database_url:
        env = service_env(tmp / "abuse-home", models, database_url,
                          MOL_TOKENS=f"bench:{TOKEN},{abuse.ATTACKER}:{abuse.ATTACKER_TOKEN}",
                          MOL_WEBHOOK_ALLOW_HOSTS='["127.0.0.0/8"]', MOL_HEARTBEAT_S="1")
        proc, base = start_api(env)
        worker = start_worker(env, tmp / "abuse-worker.log")
        try:
            ids = {owner: upload_corpora(base, token) for owner, token in (("bench", TOKEN),
                                                                             ("mallory", abuse.ATTACKER_TOKEN))}
            trained = httpx.post(f"{base}/v1/jobs", json=tiny_spec(ids["mallory"], 4),
                                 headers={"Authorization": f"Bearer {abuse.ATTACKER_TOKEN}"}).json()["id"]
            status = asyncio.run(abuse.wait_for_status(base, trained, abuse.ATTACKER_TOKEN, 300))
            if status != "succeeded":
                raise RuntimeError(f"mallory's training job ended {status}; see {tmp / 'abuse-worker.log'}")
            specs = {"bench": tiny_spec(ids["bench"], 1000), "mallory": tiny_spec(ids["mallory"], 1000),
                     "bench_training": tiny_spec(ids["bench"], 2)}
            before = peak_rss_mb(proc.pid)
            result = asyncio.run(abuse_window(base, specs, trained, args))
            result["abuse_api_peak_rss_growth_mb"] = round(peak_rss_mb(proc.pid) - before, 1)
        finally:  # the worker is killed: its warm shutdown would wait for the training job it runs, which no
            # figure reads (the scratch database and home go with it)
            os.killpg(worker.pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGTERM)
            for process in (worker, proc):
                process.wait(30)
    return result


# ---------------------------------------------------------------- streamed completions


def completion_model(models: Path, quick: bool) -> str:
    """The name of the model served as ``bench`` under ``models``: the demo's (tiny with ``quick``), told never to
    generate a special token, so that every completion runs to max_tokens."""
    from transformers import AutoTokenizer, GenerationConfig

    from mol_engine.demo import build_demo, shared_demo_dir

    name = "tiny" if quick else "demo"
    source = models / "tiny" if quick else build_demo(shared_demo_dir(), log=lambda s: print(s, file=sys.stderr)).model
    shutil.copytree(source, models / "bench")
    config = GenerationConfig.from_pretrained(source)
    config.suppress_tokens = AutoTokenizer.from_pretrained(source).all_special_ids
    config.save_pretrained(models / "bench")
    return name


async def one_completion(client: httpx.AsyncClient, max_tokens: int) -> dict:
    """Seconds to the first text chunk and from it to the end, and the finish_reason, of one streamed completion."""
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    sent, first, reason = time.perf_counter(), None, None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                first = first or (time.perf_counter() if choice["text"] else None)
                reason = choice["finish_reason"] or reason
    end = time.perf_counter()
    first = first or end
    return {"first_s": first - sent, "after_first_s": end - first, "finish_reason": reason}


async def completions_at_once(base: str, clients: int, max_tokens: int) -> dict:
    """``clients`` streamed completions at once: how many ran to max_tokens, their first-token latency p50/p95,
    tokens/s per client after its first token (median) and of all together (over the wall time)."""
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=600) as client:
        started = time.perf_counter()
        runs = await asyncio.gather(*(one_completion(client, max_tokens) for _ in range(clients)),
                                    return_exceptions=True)
        wall = time.perf_counter() - started
    done = [r for r in runs if isinstance(r, dict) and r["finish_reason"] == "length"]
    rates = [(max_tokens - 1) / r["after_first_s"] for r in done if r["after_first_s"] > 0]
    return {"clients": clients, "completed": len(done),
            "first_token_p50_ms": round(percentile([r["first_s"] for r in done], 0.5), 1),
            "first_token_p95_ms": round(percentile([r["first_s"] for r in done], 0.95), 1),
            "tokens_per_s_per_client": round(statistics.median(rates), 1) if rates else 0.0,
            "tokens_per_s_all": round(len(done) * max_tokens / wall, 1),
            "failures_sample": [f"{type(r).__name__}: {r}" for r in runs if not isinstance(r, dict)][:3]}


def completion_figures(base: str, args: argparse.Namespace) -> list[dict]:
    """:func:`completions_at_once` for each of ``--completion-clients``, after one completion that loads the model."""
    asyncio.run(completions_at_once(base, 1, 2))  # the model's load is in no figure
    return [asyncio.run(completions_at_once(base, n, args.completion_tokens)) for n in args.completion_clients]


def completion_row(run: dict) -> str:
    """The report's table row of one :func:`completions_at_once` run."""
    return (f"| streamed completions, {run['clients']} client(s) at once ({run['completed']} ran to the end) | "
            f"first token p50 {run['first_token_p50_ms']} ms, p95 {run['first_token_p95_ms']} ms; "
            f"{run['tokens_per_s_per_client']} tokens/s per client after it, {run['tokens_per_s_all']} in all |")


def abuse_outcomes(outcomes: dict[str, dict[str, int]]) -> str:
    """``oversized_anonymous_length: 401 ×4; ...`` for the report."""
    return "; ".join(f"{kind}: " + ", ".join(f"{status} ×{n}" for status, n in counts.items())
                     for kind, counts in outcomes.items())


def write_report(result: dict, args: argparse.Namespace) -> None:
    text = [
        "## API under load: slow clients, submissions, streams, completions, abuse (`python bench/api_load.py`)", "",
        f"One API process (uvicorn) on PostgreSQL, no workers; client and server share this 2-core machine over "
        f"loopback. {args.slow} slow downloaders (a {args.checkpoint_mb} MiB checkpoint read {SLOW_READ} bytes "
        f"every {TICK_S} s) and {args.slow} slow uploaders (half multipart, half a part of `/v1/uploads`, "
        f"{args.upload_kb} KiB trickled in over the window) stay connected while {args.clients} clients submit "
        f"a job, GET it and GET the list, back to back for {args.window:g} s. Then, alone, "
        f"{' and then '.join(map(str, args.completion_clients))} clients at once each stream a completion of "
        f"{args.completion_tokens} tokens (greedy) from the {result['completion_model']} model; the API generates "
        "on `MOL_GENERATION_THREADS` (2) threads, so clients beyond two wait for one.", "",
        "| measure | figure |", "|---|---|",
        f"| 5xx answers to the slow clients | {result['slow_clients_5xx']} (of {result['slow_clients']}; "
        f"{result['slow_clients_failed']} failed otherwise) |",
        f"| 5xx answers to the submitters | {result['clients_5xx']} |",
        f"| job submission under them | p50 {result['submit_p50_ms']} ms, p99 {result['submit_p99_ms']} ms "
        f"({result['submissions']} jobs) |",
        f"| GET job / list under them | p99 {result['poll_p99_ms']} ms |",
        f"| API peak RSS growth for one {result['large_upload_mb']} MiB upload (received, validated) | "
        f"{result['upload_peak_rss_growth_mb']} MiB |",
        f"| SSE streams held on one job | {result['sse_streams']}/{result['sse_streams_tried']} served, API CPU "
        f"{result['sse_cpu_percent_of_core']}% of one core |",
        *map(completion_row, result["completions"]), "",
        f"**The abuse mix** (an API, a worker and a database of their own): for {args.abuse_window:g} s one owner "
        f"sends {args.oversized_mb} MiB JSON bodies (without a token and with one; by Content-Length and chunked), "
        f"completions with {args.huge_prompt_chars:,}- and 900,000-character prompts, a burst of "
        f"{args.side_tasks} interpolation requests, and keeps as many webhook endpoints as she may "
        f"({result['abuse_dead_webhooks']}) on a server that never answers, each of her cancelled jobs a delivery "
        "to every one. Meanwhile another owner submits, GETs and cancels jobs (4 loops), times each cancel's webhook "
        "delivery to its own receiver, and then submits a 2-step training job and times its wait for the worker.",
        "", "| measure | figure |", "|---|---|",
        f"| 5xx answers to anyone | {result['abuse_5xx']} |",
        f"| the abusive requests' answers | {abuse_outcomes(result['abuse_outcomes'])} |",
        f"| API peak RSS growth over the mix | {result['abuse_api_peak_rss_growth_mb']} MiB |",
        f"| the other owner's submit | p99 {result['other_owner_submit_p99_ms']} ms "
        f"({result['other_owner_submissions']} jobs) |",
        f"| the other owner's webhook delivery (cancel answered -> received) | p99 "
        f"{result['other_owner_webhook_p99_ms']} ms ({result['other_owner_webhooks_delivered']} delivered) |",
        f"| the other owner's training job, queued behind the side tasks | {result['other_owner_queued_wait_s']} s "
        f"to `{result['other_owner_training_status']}` |", "",
        "```", json.dumps(result), "```", ""]
    replace_section(ROOT / "docs" / "performance.md", "api_load", "\n".join(text))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few clients for a few seconds; no report")
    parser.add_argument("--slow", type=int, default=40, help="slow downloaders, and as many slow uploaders")
    parser.add_argument("--clients", type=int, default=20, help="clients that submit and poll")
    parser.add_argument("--window", type=float, default=60.0, help="seconds the submitters run")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-window", type=float, default=10.0, help="seconds the streams are held")
    parser.add_argument("--checkpoint-mb", type=int, default=64)
    parser.add_argument("--upload-kb", type=int, default=256, help="size of each slow upload")
    parser.add_argument("--large-upload-mb", type=int, default=200, help="one upload whose memory is measured")
    parser.add_argument("--completion-clients", type=int, nargs="+", default=[1, 8],
                        help="streamed completions at once, one measurement per count")
    parser.add_argument("--completion-tokens", type=int, default=64, help="tokens of each streamed completion")
    parser.add_argument("--abuse-window", type=float, default=30.0, help="seconds of the abuse mix")
    parser.add_argument("--oversized-mb", type=int, default=200, help="size of each oversized JSON body")
    parser.add_argument("--huge-prompt-chars", type=int, default=9_600_000, help="the huge prompts' length")
    parser.add_argument("--side-tasks", type=int, default=30, help="interpolation requests in one owner's burst")
    if parser.parse_args(argv).quick:  # smaller defaults; options given still win
        parser.set_defaults(slow=4, clients=3, window=2.0, streams=20, stream_window=1.0, checkpoint_mb=8,
                            upload_kb=16, large_upload_mb=8, completion_tokens=8, abuse_window=2.0,
                            oversized_mb=16, huge_prompt_chars=2_000_000, side_tasks=8)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp, scratch_database() as database_url:
        home = Path(tmp) / "home"
        make_model(Path(tmp) / "models")
        model_name = completion_model(Path(tmp) / "models", args.quick)
        # the completion clients are one owner: let all of them in, queued on 2 threads as before
        proc, base = start_api(service_env(home, Path(tmp) / "models", database_url, MOL_GENERATION_THREADS="2",
                                           MOL_GENERATIONS_PER_OWNER="64"))
        try:
            text = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(10))
            ids = {p: httpx.post(f"{base}/v1/datasets", headers=HEADERS, data={"purpose": p},
                                 files={"file": ("d.jsonl", text)}).json()["id"] for p in ("domain", "general")}
            spec = {"base_model": "tiny", "domain_data": [ids["domain"]], "general_data": [ids["general"]]}
            job_id = httpx.post(f"{base}/v1/jobs", headers=HEADERS, json=spec).json()["id"]
            download = add_checkpoint(home, job_id, args.checkpoint_mb * 2**20)
            growth = upload_peak_growth_mb(base, Path(tmp), args.large_upload_mb, proc.pid)
            result = asyncio.run(under_slow_clients(base, spec, download, args))
            connected, used = asyncio.run(hold_streams(base, job_id, args.streams, args.stream_window, proc.pid))
            result |= {"sse_streams": connected, "sse_streams_tried": args.streams,
                       "sse_cpu_percent_of_core": round(100 * used / args.stream_window, 1),
                       "large_upload_mb": args.large_upload_mb, "upload_peak_rss_growth_mb": growth,
                       "database": "postgresql", "quick": args.quick, "completion_model": model_name,
                       "completion_tokens": args.completion_tokens, "completions": completion_figures(base, args)}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        result |= abuse_mix(Path(tmp), Path(tmp) / "models", args)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result), flush=True)
    if not args.quick:
        write_report(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
