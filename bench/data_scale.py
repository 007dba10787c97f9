"""Does corpus size stop mattering? Host memory of a job on 1M vs 100M tokens, store build speed, store size.

    python bench/data_scale.py [--quick] [--tokens 100000000]

Figures (goal in brackets), all measured in this run; corpora are generated here, never committed:
- ``rss_growth_1m_to_100m``: peak RSS of a short ``mol train`` (store build included) on the big corpus over
  the same on 1M tokens [≤ 1.10]. Each run is a fresh process; the peak is its whole-life max RSS, taken
  with ``memory.PROBE_ENV`` (glibc hands freed blocks over 1 MiB back at once). Without it the peaks of
  repeated identical runs scatter by ±10% (allocator retention, not live data), which would hide the signal.
- ``tokenize_vs_raw_throughput``: store-building tokens/s (read, hash, tokenize, write, checksum) over a bare
  ``tokenizers`` ``encode_batch_fast`` of the same texts, already in memory, on the same threads [≥ 0.80].
- ``store_bytes_per_token``: bytes on disk per token [≤ 2.1 for a vocabulary that fits uint16].
- ``upload_resume_ok``: a 200 MB upload cut at 50% and resumed has the uninterrupted upload's sha256.
- ``document_vs_concat_step_time_{256,1024}``: one MoL step with document packing over the same step with
  concat, at two sequence lengths (for choosing the default; no goal).
Writes its section of docs/performance.md and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from memory import PROBE_ENV  # glibc returns freed blocks over 1 MiB at once: RSS follows live memory
from report import replace_section

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"rss_growth_1m_to_100m": (None, 1.10), "tokenize_vs_raw_throughput": (0.80, None),
           "store_bytes_per_token": (None, 2.1), "upload_resume_ok": (True, None)}


# ---------------------------------------------------------------- inputs


def make_tokenizer_model(root: Path) -> Path:
    """A tiny Llama with an 8k byte-level BPE tokenizer trained on the generator's texts (built once)."""
    import torch
    from transformers import LlamaForCausalLM

    from mol_engine.demo import build_tokenizer, general_documents, tiny_llama_config

    path = root / "model"
    if (path / "config.json").is_file():
        return path
    tokenizer = build_tokenizer(general_documents(), vocab_size=8192)
    config = tiny_llama_config(len(tokenizer), hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def documents(n: int, seed: int):
    """``n`` documents of 2-12 Python standard-library docstrings each (about 500 tokens), numbered."""
    from mol_engine.demo import general_documents

    rng = random.Random(seed)
    pool = general_documents()
    for i in range(n):
        yield f"Document {i}.\n" + "\n\n".join(rng.choices(pool, k=rng.randint(2, 12)))


def write_corpus(path: Path, tokens: int, tokenizer, seed: int) -> Path:
    """A JSONL corpus of about ``tokens`` tokens (measured on a sample of the generator's documents)."""
    sample = list(documents(200, seed))
    ids = tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"]
    per_doc = sum(len(t) for t in ids) / len(sample) + 1
    with path.open("w") as handle:
        for doc in documents(max(2, round(tokens / per_doc)), seed):
            handle.write(json.dumps({"text": doc}) + "\n")
    return path


# ---------------------------------------------------------------- measurements


def peak_rss_of_train(model: Path, domain: Path, general: Path, out: Path) -> dict:
    """Peak RSS (MiB) of ``mol train`` for a few steps, in a fresh process that builds the stores itself."""
    spec = {"name": "data-scale", "base_model": str(model), "domain_data": [str(domain)],
            "general_data": [str(general)], "seq_len": 256, "batch_size": 8, "max_steps": 4, "eval_every": 4,
            "eval_batches": 2, "save_every": 1000, "keep_checkpoints": 1, "device": "cpu", "warmup_steps": 1}
    shutil.rmtree(out, ignore_errors=True)
    spec_file = out.with_suffix(".json")
    spec_file.write_text(json.dumps(spec))
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)")
    mol = str(Path(sys.executable).with_name("mol"))
    done = subprocess.run([sys.executable, "-c", wrapper, mol, "train", str(spec_file), "--out", str(out)],
                          check=True, capture_output=True, text=True, env=os.environ | PROBE_ENV)
    kib, seconds = done.stdout.split()
    return {"peak_rss_mib": int(kib) / 1024, "seconds": float(seconds)}


def tokenize_throughput(model: Path, corpus: Path, root: Path, rounds: int) -> dict:
    """Store build vs bare ``encode_batch_fast`` of the same batches, alternated ``rounds`` times; medians."""
    from mol_engine.data import DocumentReader
    from mol_engine.modeling import load_tokenizer
    from mol_engine.token_store import BATCH_CHARS, Encoder, _batches, open_or_build

    tokenizer = load_tokenizer(str(model))
    batches = list(_batches(DocumentReader(corpus), BATCH_CHARS))
    rust = Encoder(tokenizer).rust
    store_rates, bare_rates, n_tokens = [], [], 0
    for i in range(rounds):
        copy = root / f"round-{i}" / corpus.name
        copy.parent.mkdir(parents=True)
        shutil.copy(corpus, copy)  # a fresh file: nothing cached, the sha256 included
        started = time.perf_counter()
        store = open_or_build(copy, tokenizer)
        store_rates.append(store.n_tokens / (time.perf_counter() - started))
        started = time.perf_counter()
        n_tokens = sum(len(e.ids) for batch in batches for e in rust.encode_batch_fast(batch, add_special_tokens=False))
        bare_rates.append(n_tokens / (time.perf_counter() - started))
        on_disk = sum(f.stat().st_size for f in store.path.iterdir())
        tokens = store.n_tokens
        shutil.rmtree(copy.parent)
    return {"store_tokens_per_s": statistics.median(store_rates), "bare_tokens_per_s": statistics.median(bare_rates),
            "ratios": [s / b for s, b in zip(store_rates, bare_rates, strict=True)], "tokens": tokens,
            "text_tokens": n_tokens, "store_bytes": on_disk, "dtype": str(store.tokens.dtype)}


def packing_step_cost(model_root: Path, domain: Path, general: Path, rounds: int, seq_len: int,
                      batch_size: int) -> dict:
    """One MoL step (h=256, 4 layers) with document packing over concat, interleaved; median paired ratio."""
    from step_cost import Shape, make_model

    from mol_engine.spec import JobSpec
    from mol_engine.train import setup_run, train_step

    model = make_model(model_root, Shape(), demo=model_root)  # the tokenizer of model_root/model
    runs = {}
    for packing in ("concat", "document"):
        spec = JobSpec(base_model=str(model), domain_data=[str(domain)], general_data=[str(general)],
                       seq_len=seq_len, batch_size=batch_size, packing=packing, max_steps=10**6,
                       eval_every=10**6, save_every=10**6, device="cpu", lr=1e-4, warmup_steps=0)
        runs[packing] = setup_run(spec, model_root / f"packing-{packing}-{seq_len}")
        train_step(runs[packing], 1)  # warm-up
    times = {name: [] for name in runs}
    for step in range(2, rounds + 2):
        for name, run in runs.items():
            started = time.perf_counter()
            train_step(run, step)
            times[name].append(time.perf_counter() - started)
    ratios = [d / c for d, c in zip(times["document"], times["concat"], strict=True)]
    return {"ratio": statistics.median(ratios), "concat_s": statistics.median(times["concat"]),
            "document_s": statistics.median(times["document"])}


def store_format(corpus: Path, tokenizer, root: Path) -> dict:
    from store_format import compare

    from mol_engine.token_store import open_or_build

    store = open_or_build(corpus, tokenizer)  # built by the big mol train run above
    work = root / "format"
    work.mkdir(exist_ok=True)
    return compare(store, work) | {"tokens": store.n_tokens}


def upload_resume(size: int) -> dict:
    from upload_resume import upload_resume_ok

    return upload_resume_ok(size)


# ---------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the bench runs (minutes)")
    parser.add_argument("--tokens", type=int, default=100_000_000, help="the big corpus, in tokens")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary directory)")
    args = parser.parse_args(argv)
    big = 5_000_000 if args.quick else args.tokens
    started = time.perf_counter()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mol-data-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        from mol_engine.modeling import load_tokenizer

        model = make_tokenizer_model(root)
        tokenizer = load_tokenizer(str(model))
        small = {name: write_corpus(root / f"{name}-1m.jsonl", 1_000_000, tokenizer, seed) for name, seed in
                 (("domain", 1), ("general", 2))}
        large = {name: write_corpus(root / f"{name}-big.jsonl", big, tokenizer, seed) for name, seed in
                 (("domain", 3), ("general", 4))}
        say(f"corpora: 1M-token files {small['domain'].stat().st_size / 2**20:.0f} MiB each, big files "
            f"{large['domain'].stat().st_size / 2**20:.0f} MiB each (domain and general)")
        results: dict = {}
        rss_small = peak_rss_of_train(model, small["domain"], small["general"], root / "train-1m")
        rss_big = peak_rss_of_train(model, large["domain"], large["general"], root / "train-big")
        results["rss_growth_1m_to_100m"] = rss_big["peak_rss_mib"] / rss_small["peak_rss_mib"]
        say(f"mol train, 4 steps, stores built in the run: peak RSS {rss_big['peak_rss_mib']:.0f} MiB on 2 x "
            f"{big:,} tokens ({rss_big['seconds']:.0f} s) / {rss_small['peak_rss_mib']:.0f} MiB on 2 x 1M tokens "
            f"({rss_small['seconds']:.0f} s) = {results['rss_growth_1m_to_100m']:.3f}")
        sample = write_corpus(root / "throughput.jsonl", 2_000_000 if args.quick else 20_000_000, tokenizer, 5)
        tok = tokenize_throughput(model, sample, root / "throughput", rounds=3)
        results["tokenize_vs_raw_throughput"] = statistics.median(tok["ratios"])
        results["store_bytes_per_token"] = tok["store_bytes"] / tok["tokens"]
        say(f"store build {tok['store_tokens_per_s']:,.0f} tokens/s / bare encode_batch_fast "
            f"{tok['bare_tokens_per_s']:,.0f} tokens/s = {results['tokenize_vs_raw_throughput']:.3f} (median of "
            f"{', '.join(f'{r:.3f}' for r in tok['ratios'])}; {tok['tokens']:,} tokens with BOS/EOS)")
        say(f"store on disk {tok['store_bytes']:,} bytes / {tok['tokens']:,} tokens = "
            f"{results['store_bytes_per_token']:.3f} bytes per token ({tok['dtype']})")
        fmt = store_format(large["domain"], tokenizer, root)
        say(f"format, same tokens ({fmt['tokens']:,}): numpy memmap {fmt['numpy_bytes_per_token']:.3f} B/token, "
            f"random 256-token window {fmt['numpy_window_us']:.1f} µs | Arrow IPC (datasets' on-disk format) "
            f"{fmt['arrow_bytes_per_token']:.3f} B/token, window {fmt['arrow_window_us']:.1f} µs")
        up = upload_resume(20 * 2**20 if args.quick else 200 * 2**20)
        results["upload_resume_ok"] = bool(up["upload_resume_ok"])
        say(f"upload of {up['bytes'] / 2**20:.0f} MiB cut at 50% and resumed: same sha256 as uninterrupted = "
            f"{results['upload_resume_ok']} ({up['seconds_whole']:.1f} s whole, {up['seconds_resumed']:.1f} s "
            "cut + resumed)")
        for seq_len, rows in ((256, 8), (1024, 2)):
            pack = packing_step_cost(root, small["domain"], small["general"], rounds=3 if args.quick else 8,
                                     seq_len=seq_len, batch_size=rows)
            results[f"document_vs_concat_step_time_{seq_len}"] = pack["ratio"]
            say(f"MoL step (h=256, 4 layers, {rows} x {seq_len} tokens) with document packing "
                f"{pack['document_s'] * 1000:.0f} ms / concat {pack['concat_s'] * 1000:.0f} ms = {pack['ratio']:.3f} "
                "(median of paired steps)")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    results["seconds"] = time.perf_counter() - started
    if not args.quick:
        write_report(results, lines, big)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}))
    return 0 if all(_holds(results[k], *TARGETS[k]) for k in TARGETS) else 1


def _holds(value, low, high) -> bool:
    if isinstance(low, bool):
        return value is low
    return (low is None or value >= low) and (high is None or value <= high)


def write_report(results: dict, lines: list[str], big: int) -> None:
    table = ["| figure | value | goal |", "|---|---|---|"]
    for key, (low, high) in TARGETS.items():
        goal = "true" if isinstance(low, bool) else f"≥ {low}" if low is not None else f"≤ {high}"
        value = results[key]
        shown = str(value).lower() if isinstance(value, bool) else f"{value:.3f}"
        table.append(f"| `{key}` | {shown} | {goal} {'✅' if _holds(value, low, high) else '❌'} |")
    for seq_len in (256, 1024):
        key = f"document_vs_concat_step_time_{seq_len}"
        table.append(f"| `{key}` | {results[key]:.3f} | (informs the packing default) |")
    text = ["## Data at scale: token stores", "",
            f"Produced by `python bench/data_scale.py` in {results['seconds']:.0f} s on this machine "
            f"({os.cpu_count()} CPU cores); the big corpus is {big:,} tokens per file. Rerun the bench rather than "
            "edit by hand.", "",
            "Peak RSS is each `mol train`'s whole-life maximum in a fresh process, token-store builds included, "
            "with glibc handing freed blocks over 1 MiB back at once (`bench/memory.py`), so that it follows live "
            "memory rather than what the allocator kept.", "", *table, "", "Every figure with its inputs:", "",
            "```", *lines, "```", ""]
    replace_section(ROOT / "docs" / "performance.md", "data_scale", "\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
