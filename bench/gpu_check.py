"""The engine on a GPU, in one call of a few minutes: a random-init model of Qwen2.5-0.5B's shape, bf16, seq 2048.

    .venv/bin/python bench/gpu_check.py [--steps 12] [--batch-size 8]
    .venv/bin/python bench/gpu_check.py --smoke     # the same code path on the CPU, a tiny model, one step each

Measures, each variant alone after the others freed their memory (full fine-tuning: fp32 master weights, bf16
autocast): tokens/s, model FLOPs utilisation and peak GPU memory of

- CPT, compiled (``compile: auto``) and not (``compile: off``);
- MoL with the exact reference and with the cached top-k reference;
- MoL (exact) at several loss chunk sizes (``loss_chunk_tokens``; the default sizes chunks by the device);
- a profile of two MoL (exact) steps: the top kernels by GPU time, the GPU's idle share of the wall time and the
  host syncs per step (``torch.cuda.set_sync_debug_mode``: one warning per synchronising call);
- ``eval/general_kl`` at step 0 under bf16 (the frozen base computes as the trained weights do: goal ≤ 1e-6);
- MoL (exact) with FSDP2 on every visible GPU under torchrun (skipped with one GPU).

Prints one JSON line, its ``goals`` each with the value, the goal and whether it is met. Without CUDA (and without
``--smoke``) it prints a JSON line saying so and exits 0.

MFU = (6 · N + 12 · L · d · T) · tokens/s / peak dense bf16 FLOP/s of the device (``PEAK_BF16``, looked up by
``torch.cuda.get_device_name``; null for a device not in the table): N the trained model's parameters (the tied
embedding once: it is the head's matmul), L layers, d the hidden size, T the sequence (attention's score and value
matmuls, forward and backward, counted in full as PaLM and torchtitan do, though causal attention computes half).
The reference's forward in MoL is not counted, so MoL's MFU is its useful training work, comparable with CPT's.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mol_engine.callbacks import Callback  # noqa: E402
from mol_engine.distributed import World, join_world  # noqa: E402
from mol_engine.modeling import attention_of, use_compile  # noqa: E402
from mol_engine.spec import JobSpec  # noqa: E402
from mol_engine.spec_file import read_spec_file  # noqa: E402
from mol_engine.train import _evaluate, setup_run, train_step  # noqa: E402

# dense bf16 tensor-core peak, FLOP/s (vendor datasheets, without sparsity); the first name found in the device's
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12}
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128,
            vocab_size=512, tie_word_embeddings=True, max_position_embeddings=256)  # --smoke, on the CPU
SEQ_LEN, SMOKE_SEQ_LEN = 2048, 64
# name -> the job's fields over MoL with the exact reference, compile auto and chunks sized by the device
VARIANTS = {"cpt": {"method": "cpt"}, "cpt_eager": {"method": "cpt", "compile": "off"}, "mol_exact": {},
            "mol_cached": {"reference": "cached"}}
CHUNK_SWEEP = (256, 1024, 4096)  # loss_chunk_tokens measured beside the device's default, MoL exact
GOALS = {"cpt_mfu": (0.30, ">="), "mol_exact_cpt_throughput": (0.88, ">="), "cached_cpt_throughput": (0.95, ">="),
         "step0_kl_bf16": (1e-6, "<=")}
WORDS = ("the river model light north stone garden window paper quiet music winter table letter small green open "
         "under over after before city morning evening story road").split()


def peak_flops(name: str) -> float | None:
    """The dense bf16 peak of the device called ``name`` (the longest table key it contains), or None."""
    keys = sorted((k for k in PEAK_BF16 if k in name), key=len, reverse=True)
    return PEAK_BF16[keys[0]] if keys else None


def flops_per_token(n_params: int, layers: int, hidden: int, seq_len: int) -> int:
    """Training FLOPs per token: 6·N for the matmuls of the weights, 12·L·d·T for attention's own (see the top)."""
    return 6 * n_params + 12 * layers * hidden * seq_len


def build(root: Path, general_blocks: int, shape: dict, words: tuple[int, int] = (200, 600)) -> dict[str, str]:
    """A random-init Qwen2 of ``shape`` (a small BPE tokenizer: ids stay under its vocabulary) and domain / general
    JSONL corpora of documents of ``words`` words under ``root``; returns their paths."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mol_engine.demo import build_tokenizer

    rng = random.Random(0)
    docs = {name: [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + "." for _ in range(n)]
            for name, n in (("domain", 2 * general_blocks), ("general", general_blocks))}
    tokenizer = build_tokenizer(docs["general"][:200], vocab_size=min(512, shape["vocab_size"]))
    config = Qwen2Config(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    paths = {"model": str(root / "model")}
    for name, texts in docs.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        paths[name] = str(root / f"{name}.jsonl")
    return paths


def job(paths: dict[str, str], batch_size: int, steps: int, device: str, seq_len: int, **fields) -> JobSpec:
    """The measured job: full fine-tuning, bf16 autocast, MoL exact unless ``fields`` say otherwise, ``steps`` + 2
    warm-up steps, no scheduled evaluation or save."""
    base = dict(base_model=paths["model"], domain_data=[paths["domain"]], general_data=[paths["general"]],
                method="mol", reference="exact", seq_len=seq_len, batch_size=batch_size, max_steps=steps + 2,
                warmup_steps=0, lr=1e-5, precision="bf16", device=device, eval_every=10_000, save_every=10_000,
                eval_batches=1, reference_top_k=64, heldout_fraction=0.02)
    return JobSpec(**base | fields)


class Device:
    """The measured device's clock, memory counters and name (CUDA, or the CPU for ``--smoke``)."""

    def __init__(self, kind: str) -> None:
        self.cuda = kind == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def name(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else "cpu"

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def measure(spec: JobSpec, out: Path, world: World, steps: int, dev: Device) -> dict:
    """tokens/s (all ranks), MFU and this rank's peak memory over ``steps`` steps after 2 warm-up steps."""
    dev.reset_peak()
    run = setup_run(spec, out, world=world)
    config = run.model.config
    n_params = sum(p.numel() for p in run.model.parameters())  # a DTensor's numel is the full parameter's
    for step in (1, 2):
        train_step(run, step)
    dev.sync()
    started = time.perf_counter()
    for step in range(3, steps + 3):
        metrics = train_step(run, step)
    dev.sync()
    tokens_per_s = steps * spec.batch_size * spec.seq_len * world.size / (time.perf_counter() - started)
    peak = peak_flops(dev.name()) if dev.cuda else None
    flops = flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, spec.seq_len)
    result = {"tokens_per_s": round(tokens_per_s), "mfu": round(flops * tokens_per_s / (peak * world.size), 4)
              if peak else None, "peak_memory_gib": dev.peak_gib(), "loss": round(float(metrics["train/loss"]), 4),
              "params": n_params, "chunk": run.chunk, "attention": attention_of(run.model),
              "compile": use_compile(spec, run.device)}
    del run
    dev.free()
    return result


def profile(spec: JobSpec, out: Path, dev: Device, top: int = 8) -> dict:
    """Two profiled MoL steps after two warm-up ones: the top kernels by device time, the device's idle share of
    the wall time, and host syncs per step (CUDA's sync debug mode warns once per synchronising call)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run = setup_run(spec, out, world=World())
    for step in (1, 2):
        train_step(run, step)
    dev.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.cuda else [])
    started = time.perf_counter()
    with torch_profile(activities=activities) as prof, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sync_debug(dev):
            for step in (3, 4):
                train_step(run, step)
        dev.sync()
    wall_us = (time.perf_counter() - started) * 1e6
    del run
    dev.free()
    return summarize(prof.key_averages(), wall_us, caught, dev, top)


@contextlib.contextmanager
def sync_debug(dev: Device):
    """CUDA's sync debug mode ``warn`` for the with-block (nothing on the CPU, where nothing syncs)."""
    if not dev.cuda:
        yield
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def summarize(events, wall_us: float, caught: list, dev: Device, top: int) -> dict:
    """The profile's top ``top`` device kernels (or CPU ops in a smoke run) by self time, the device's idle share
    of ``wall_us`` (1 − summed kernel time / wall: kernels of one stream do not overlap), host syncs per step."""
    attr = "self_device_time_total" if dev.cuda else "self_cpu_time_total"
    kernels = [e for e in events if getattr(e, attr, 0) > 0 and (not dev.cuda or e.device_type.name == "CUDA")]
    kernels.sort(key=lambda e: getattr(e, attr), reverse=True)
    busy = sum(getattr(e, attr) for e in kernels) if dev.cuda else None
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return {"top_kernels": [{"name": e.key[:80], "ms": round(getattr(e, attr) / 1e3, 2), "calls": e.count}
                            for e in kernels[:top]],
            "device_idle_share": round(max(0.0, 1 - busy / wall_us), 3) if busy is not None else None,
            "host_syncs_per_step": len(syncs) / 2 if dev.cuda else None}


def step0_kl(spec: JobSpec, out: Path) -> float:
    """``eval/general_kl`` at step 0 (the model against its frozen base, before any update) under bf16."""
    run = setup_run(spec, out, world=World())
    kl = _evaluate(run, 0, Callback())["eval/general_kl"]
    del run
    gc.collect()
    return kl


def fsdp_all_gpus(paths: dict[str, str], root: Path, batch_size: int, steps: int) -> dict:
    """MoL (exact reference) with FSDP2 on every visible GPU, one process each under torchrun; rank 0's figures."""
    n = torch.cuda.device_count()
    if n < 2:
        return {"skipped": f"{n} GPU visible: FSDP needs two or more"}
    spec_path = root / "fsdp.yaml"
    spec = job(paths, batch_size, steps, "cuda", SEQ_LEN, distributed="fsdp")
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
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
        result = measure(spec, spec_path.parent / "fsdp-run", world, steps, Device("cuda"))
        if world.is_main:
            print(json.dumps(result), flush=True)
    finally:
        world.close()


def goals(results: dict, smoke: bool = False) -> dict:
    """Each goal of issue 19 with its value and whether it is met (None: not measured, e.g. MFU on a CPU, or a
    smoke run, whose one-step figures of a tiny model on the CPU say nothing of a GPU)."""
    out = {}
    for name, (goal, sense) in GOALS.items():
        value = results.get(name)
        met = None if value is None or smoke else (value >= goal if sense == ">=" else value <= goal)
        out[name] = {"value": value, "goal": f"{sense} {goal:g}", "met": met}
    return out


def run_all(root: Path, args: argparse.Namespace, dev: Device) -> dict:
    """Every measurement of the check, as one dict (the JSON line, less its header)."""
    shape, seq_len = (TINY, SMOKE_SEQ_LEN) if args.smoke else (QWEN25_05B, SEQ_LEN)
    device = "cuda" if dev.cuda else "cpu"
    paths = build(root, general_blocks=4 * args.batch_size * (args.steps + 4), shape=shape,
                  words=(40, 80) if args.smoke else (200, 600))

    def spec(**fields) -> JobSpec:
        return job(paths, args.batch_size, args.steps, device, seq_len, **fields)

    results = {name: measure(spec(**fields), root / name, World(), args.steps, dev)
               for name, fields in VARIANTS.items()}
    results["chunk_sweep"] = {str(c): measure(spec(loss_chunk_tokens=c), root / f"chunk-{c}", World(), args.steps,
                                              dev)["tokens_per_s"] for c in CHUNK_SWEEP}
    results["chunk_sweep"][f"default ({results['mol_exact']['chunk']})"] = results["mol_exact"]["tokens_per_s"]
    results["profile_mol_exact"] = profile(spec(), root / "profile", dev)
    results["step0_kl_bf16"] = step0_kl(spec(), root / "step0")
    results["fsdp_mol_exact"] = fsdp_all_gpus(paths, root, args.batch_size, args.steps) if dev.cuda else \
        {"skipped": "no GPU"}
    cpt, exact, cached = results["cpt"], results["mol_exact"], results["mol_cached"]
    results |= {"cpt_mfu": cpt["mfu"],
                "compile_speedup": round(cpt["tokens_per_s"] / results["cpt_eager"]["tokens_per_s"], 3),
                "mol_exact_cpt_throughput": round(exact["tokens_per_s"] / cpt["tokens_per_s"], 3),
                "cached_cpt_throughput": round(cached["tokens_per_s"] / cpt["tokens_per_s"], 3)}
    if dev.cuda:
        results["cached_exact_memory"] = round(cached["peak_memory_gib"] / exact["peak_memory_gib"], 3)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8, help="rows of 2048 tokens per step (and per GPU)")
    parser.add_argument("--smoke", action="store_true", help="the same code path on the CPU: a tiny model, 1 step")
    parser.add_argument("--fsdp-worker", nargs=2, metavar=("SPEC", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fsdp_worker:
        fsdp_worker(Path(args.fsdp_worker[0]), int(args.fsdp_worker[1]))
        return 0
    if args.smoke:
        args.steps, args.batch_size = 1, 2
    elif not torch.cuda.is_available():
        print(json.dumps({"gpu_check": "skipped", "reason": "needs CUDA (no GPU visible to torch)"}))
        return 0
    dev = Device("cpu" if args.smoke else "cuda")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(Path(tmp), args, dev)
    print(json.dumps({
        "device": dev.name(), "gpus": torch.cuda.device_count() if dev.cuda else 0,
        "seq_len": SMOKE_SEQ_LEN if args.smoke else SEQ_LEN, "batch_size": args.batch_size, "steps": args.steps,
        "peak_bf16_flops": peak_flops(dev.name()) if dev.cuda else None, "torch": torch.__version__,
        **results, "goals": goals(results, args.smoke), "smoke": args.smoke,
        "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
