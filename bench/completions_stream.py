"""Streamed completions from one API process: first-token latency and tokens/s with 1 and with 8 clients at once.

    .venv/bin/python bench/completions_stream.py [--model-dir DIR] [--clients 1 8] [--max-tokens 64]

Starts `mol api` (SQLite, no workers) serving ``--model-dir`` as ``bench`` (default: a small Llama built here,
hidden 64, 4 layers, 256 positions; its end-of-text token is dropped so every completion runs to
``--max-tokens``), warms it up with one completion, then for each client count sends that many streamed
``POST /v1/completions`` at once over loopback and reads their SSE chunks. Per count: first-token latency
(request sent to first text chunk) p50 and max, each client's tokens/s after its first token, and all clients'
tokens per wall second. Clients beyond ``MOL_GENERATION_THREADS`` (2) wait for a thread: their first token comes
later, which is the bound doing its job. Prints one JSON line; client and server share the machine.
"""

from __future__ import annotations

import argparse
import asyncio
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
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "The river runs past the stone garden, and in the morning"


def make_model(directory: Path) -> Path:
    """A small random Llama with no end-of-text token (so a completion always runs to max_tokens)."""
    from transformers import LlamaForCausalLM

    from mol_engine.demo import build_tokenizer, tiny_llama_config

    tokenizer = build_tokenizer([PROMPT, "some more text to learn a handful of merges from"] * 20, vocab_size=300)
    config = tiny_llama_config(len(tokenizer), hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128,
                               max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    config.eos_token_id = None
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def start_api(home: Path, models: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"MOL_HOME": str(home), "MOL_TOKENS": f"bench:{TOKEN}", "MOL_MODELS_DIR": str(models),
                        "MOL_DEMO_MODEL": "false"}
    for name in ("MOL_BROKER_URL", "MOL_DATABASE_URL"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "api", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API did not start")


async def one_stream(client: httpx.AsyncClient, max_tokens: int) -> dict:
    """(first-token seconds, text chunks, seconds from the first chunk to the end) of one streamed completion."""
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    sent, first, pieces = time.perf_counter(), None, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if json.loads(line[6:])["choices"][0]["text"]:
                first = first or time.perf_counter()
                pieces += 1
    return {"first_s": first - sent, "pieces": pieces, "after_first_s": time.perf_counter() - first}


async def at_once(base: str, clients: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=600) as client:
        start = time.perf_counter()
        runs = await asyncio.gather(*(one_stream(client, max_tokens) for _ in range(clients)))
        wall = time.perf_counter() - start
    firsts = [r["first_s"] * 1000 for r in runs]
    return {"clients": clients, "first_token_p50_ms": round(statistics.median(firsts)),
            "first_token_max_ms": round(max(firsts)),
            "tokens_per_s_per_client": round(statistics.median(r["pieces"] / r["after_first_s"] for r in runs), 1),
            "tokens_per_s_all": round(sum(r["pieces"] for r in runs) / wall, 1),
            "tokens_per_client": statistics.median(r["pieces"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a Hugging Face model directory (default: built here)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        if args.model_dir:
            (models / "bench").symlink_to(args.model_dir.resolve())
        else:
            make_model(models / "bench")
        proc, base = start_api(Path(tmp) / "home", models)
        try:
            asyncio.run(at_once(base, 1, 4))  # loads the model: not part of any figure
            results = [asyncio.run(at_once(base, n, args.max_tokens)) for n in args.clients]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    print(json.dumps({"max_tokens": args.max_tokens, "load_avg_1m": round(os.getloadavg()[0], 1),
                      "runs": results}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
