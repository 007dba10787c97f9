"""Load on one API process over loopback: job-submission latency, and how many SSE streams it holds.

    python bench/api_load.py [--clients 16] [--jobs-per-client 20] [--streams 100,400,1000] [--window 10]

Starts `mol api` (one uvicorn process, SQLite, no workers, so jobs stay queued), then
1. N concurrent clients each submit jobs back to back: p50/p99 latency and submissions/s;
2. K concurrent SSE streams on one queued job: how many connect, and the API process's CPU use while
   they are held (per stream and in all), read from /proc.
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def start_api(home: Path, model_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {"MOL_HOME": str(home), "MOL_TOKENS": f"bench:{TOKEN}", "MOL_MODELS_DIR": str(model_dir),
                        "MOL_DEMO_MODEL": "false", "MOL_STREAM_POLL_S": "0.5"}
    env.pop("MOL_BROKER_URL", None)
    env.pop("MOL_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "api", "--port", str(port)], env=env, cwd=ROOT,
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


async def submissions(base: str, clients: int, per_client: int, spec: dict) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
            for _ in range(per_client):
                started = time.perf_counter()
                response = await client.post("/v1/jobs", json=spec)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


async def hold_streams(base: str, job_id: str, count: int, window: float, pid: int) -> tuple[int, float]:
    """(streams connected, API CPU seconds used while ``count`` streams were held for ``window`` s)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs-per-client", type=int, default=20)
    parser.add_argument("--streams", default="100,400,1000")
    parser.add_argument("--window", type=float, default=10.0, help="seconds the streams are held and measured")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp) / "models")
        proc, base = start_api(Path(tmp) / "home", Path(tmp) / "models")
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            text = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(10))
            ids = {p: httpx.post(f"{base}/v1/datasets", headers=headers, data={"purpose": p},
                                 files={"file": ("d.jsonl", text)}).json()["id"] for p in ("domain", "general")}
            spec = {"base_model": "tiny", "domain_data": [ids["domain"]], "general_data": [ids["general"]]}

            asyncio.run(submissions(base, 1, 3, spec))  # warm up: first connections, imports
            latencies = sorted(asyncio.run(submissions(base, args.clients, args.jobs_per_client, spec)))
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
            total = sum(latencies)
            print(f"job submission, {args.clients} concurrent clients x {args.jobs_per_client} jobs: "
                  f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {len(latencies)} jobs")
            print(f"  submissions/s ~ {len(latencies) / (total / args.clients):.0f}")

            job_id = httpx.post(f"{base}/v1/jobs", headers=headers, json=spec).json()["id"]
            idle_before = cpu_seconds(proc.pid)
            time.sleep(args.window)
            idle = cpu_seconds(proc.pid) - idle_before
            print(f"idle API: {100 * idle / args.window:.1f}% of one core")
            results = {}
            for count in (int(c) for c in args.streams.split(",")):
                connected, used = asyncio.run(hold_streams(base, job_id, count, args.window, proc.pid))
                share = 100 * used / args.window
                results[count] = {"connected": connected, "cpu_percent_of_core": round(share, 1)}
                print(f"SSE streams held: {connected}/{count}; API CPU {share:.1f}% of one core "
                      f"({share / max(connected, 1):.3f}% per stream)")
            print(json.dumps({"submit_p50_ms": round(p50, 1), "submit_p99_ms": round(p99, 1), "sse": results}))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


if __name__ == "__main__":
    main()
