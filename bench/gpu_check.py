"""The engine on a GPU, in one call of a few minutes: a random-init model of Qwen2.5-0.5B's shape, bf16, seq 2048.

    .venv/bin/python bench/gpu_check.py [--steps 8] [--batch-size 8]

Measures, each variant alone after the others freed their memory: CPT (decoder layers compiled, the default on
CUDA, and not: ``compile_speedup``), MoL with the exact reference and MoL with
the cached top-k reference (full fine-tuning: fp32 master weights, bf16 autocast): tokens/s, model FLOPs
utilisation and peak GPU memory; then MoL (exact) with FSDP2 on every visible GPU under torchrun (skipped with one
GPU). Prints one JSON line. Without CUDA it prints a JSON line saying so and exits 0.

MFU = 6 · N · tokens/s / peak dense bf16 FLOP/s of the device (``PEAK_BF16``, looked up by
``torch.cuda.get_device_name``; null for a device not in the table). N counts the trained model's parameters (the
tied embedding once); the reference's forward in MoL and attention's own FLOPs are not counted, so MoL's MFU is
its useful training work, comparable with CPT's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mol_engine.distributed import World, join_world  # noqa: E402
from mol_engine.modeling import attention_of, use_compile  # noqa: E402
from mol_engine.spec import JobSpec  # noqa: E402
from mol_engine.spec_file import read_spec_file  # noqa: E402
from mol_engine.train import setup_run, train_step  # noqa: E402

# dense bf16 tensor-core peak, FLOP/s (vendor datasheets, without sparsity); the first name found in the device's
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12}
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)
SEQ_LEN = 2048
WORDS = ("the river model light north stone garden window paper quiet music winter table letter small green open "
         "under over after before city morning evening story road").split()


def peak_flops(name: str) -> float | None:
    """The dense bf16 peak of the device called ``name`` (the longest table key it contains), or None."""
    keys = sorted((k for k in PEAK_BF16 if k in name), key=len, reverse=True)
    return PEAK_BF16[keys[0]] if keys else None


def build(root: Path, general_blocks: int) -> dict[str, str]:
    """A random-init Qwen2 of Qwen2.5-0.5B's shape (a small BPE tokenizer: ids stay under its vocabulary) and
    domain / general JSONL corpora under ``root``; returns their paths."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mol_engine.demo import build_tokenizer

    rng = random.Random(0)
    docs = {name: [" ".join(rng.choice(WORDS) for _ in range(rng.randint(200, 600))) + "." for _ in range(n)]
            for name, n in (("domain", 2 * general_blocks), ("general", general_blocks))}
    tokenizer = build_tokenizer(docs["general"][:200], vocab_size=512)
    config = Qwen2Config(**QWEN25_05B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    paths = {"model": str(root / "model")}
    for name, texts in docs.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        paths[name] = str(root / f"{name}.jsonl")
    return paths


def job(paths: dict[str, str], method: str, reference: str, batch_size: int, steps: int,
        distributed: str = "auto", compile: str = "auto") -> JobSpec:
    """The measured job: full fine-tuning, bf16 autocast on CUDA, ``steps`` + 2 warm-up steps (compilation, with
    ``compile`` auto: on CUDA), no eval or save."""
    return JobSpec(base_model=paths["model"], domain_data=[paths["domain"]], general_data=[paths["general"]],
                   method=method, reference=reference, seq_len=SEQ_LEN, batch_size=batch_size, max_steps=steps + 2,
                   warmup_steps=0, lr=1e-5, precision="bf16", device="cuda", eval_every=10_000, save_every=10_000,
                   reference_top_k=64, distributed=distributed, heldout_fraction=0.02, compile=compile)


def measure(spec: JobSpec, out: Path, world: World, steps: int) -> dict[str, float]:
    """tokens/s (all ranks), MFU and this rank's peak memory over ``steps`` steps after 2 warm-up steps."""
    torch.cuda.reset_peak_memory_stats()
    run = setup_run(spec, out, world=world)
    n_params = sum(p.numel() for p in run.model.parameters())  # a DTensor's numel is the full parameter's
    for step in (1, 2):
        train_step(run, step)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(3, steps + 3):
        metrics = train_step(run, step)
    torch.cuda.synchronize()
    tokens_per_s = steps * spec.batch_size * spec.seq_len * world.size / (time.perf_counter() - started)
    peak = peak_flops(torch.cuda.get_device_name(run.device))
    result = {"tokens_per_s": round(tokens_per_s), "mfu": round(6 * n_params * tokens_per_s / (peak * world.size), 4)
              if peak else None, "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
              "loss": round(metrics["train/loss"], 4), "params": n_params, "attention": attention_of(run.model),
              "compile": use_compile(spec, run.device)}
    del run
    gc.collect()
    torch.cuda.empty_cache()
    return result


def fsdp_all_gpus(paths: dict[str, str], root: Path, batch_size: int, steps: int) -> dict:
    """MoL (exact reference) with FSDP2 on every visible GPU, one process each under torchrun; rank 0's figures."""
    n = torch.cuda.device_count()
    if n < 2:
        return {"skipped": f"{n} GPU visible: FSDP needs two or more"}
    spec_path = root / "fsdp.yaml"
    spec_path.write_text(yaml.safe_dump(job(paths, "mol", "exact", batch_size, steps, "fsdp").model_dump(mode="json")))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
               str(Path(__file__).resolve()), "--fsdp-worker", str(spec_path), str(steps)]
    try:  # bounded, so the whole check stays one call of under 5 minutes
        done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT,
                              env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "4"})
    except subprocess.TimeoutExpired:
        return {"error": "the FSDP run took over 180 s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": done.stderr[-1500:]}
    return json.loads(lines[-1]) | {"gpus": n}


def fsdp_worker(spec_path: Path, steps: int) -> None:
    """One torchrun rank of :func:`fsdp_all_gpus`: rank 0 prints its measure as a JSON line."""
    spec = JobSpec.model_validate(read_spec_file(spec_path))
    world = join_world("cuda")
    try:
        result = measure(spec, spec_path.parent / "fsdp-run", world, steps)
        if world.is_main:
            print(json.dumps(result), flush=True)
    finally:
        world.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="rows of 2048 tokens per step (and per GPU)")
    parser.add_argument("--fsdp-worker", nargs=2, metavar=("SPEC", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fsdp_worker:
        fsdp_worker(Path(args.fsdp_worker[0]), int(args.fsdp_worker[1]))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"gpu_check": "skipped", "reason": "needs CUDA (no GPU visible to torch)"}))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build(root, general_blocks=4 * args.batch_size * (args.steps + 2))
        variants = {"cpt": ("cpt", "exact", "auto"), "cpt_compile_off": ("cpt", "exact", "off"),
                    "mol_exact": ("mol", "exact", "auto"), "mol_cached": ("mol", "cached", "auto")}
        results = {name: measure(job(paths, method, ref, args.batch_size, args.steps, compile=compiled), root / name,
                                 World(), args.steps)
                   for name, (method, ref, compiled) in variants.items()}
        results["fsdp_mol_exact"] = fsdp_all_gpus(paths, root, args.batch_size, args.steps)
    cpt, exact, cached = results["cpt"], results["mol_exact"], results["mol_cached"]
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "seq_len": SEQ_LEN,
        "batch_size": args.batch_size, "steps": args.steps, "peak_bf16_flops": peak_flops(torch.cuda.get_device_name()),
        **results,
        "mol_cpt_throughput": round(exact["tokens_per_s"] / cpt["tokens_per_s"], 3),
        "compile_speedup": round(cpt["tokens_per_s"] / results["cpt_compile_off"]["tokens_per_s"], 3),
        "cached_cpt_throughput": round(cached["tokens_per_s"] / cpt["tokens_per_s"], 3),
        "cached_exact_memory": round(cached["peak_memory_gib"] / exact["peak_memory_gib"], 3),
        "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
