"""FSDP2 on CPU: 2 processes (torchrun, gloo, ``distributed: fsdp``) against 1, same global batch, fp32.

Two micro-batches per step: each one's backward reduce-scatters (the ranks' gradients are sharded, and counted,
before the second), and the curve must still follow the single process's.

    .venv/bin/python bench/fsdp_check.py [--steps 4]

Builds a tiny Llama (tied embeddings) and small corpora in a temporary directory, trains a few MoL steps in one
process and in two, and prints one JSON line: ``fsdp_vs_single_curve_maxrel`` (the largest relative difference of
loss, domain CE and gradient norm over the steps; goal <= 1e-4), ``fsdp_vs_single_kl_maxabs`` (the general KL's
largest absolute difference) and ``fsdp_rank_memory_ratio`` (parameter + optimizer-state bytes held by the largest
rank over the single process's; about 0.5). bench/numerics.py uses ``--rss-spec`` (:func:`setup_rss`) for
``fsdp_rank_peak_rss_ratio``.

``--worker SPEC OUT`` is the per-process target torchrun starts (tests/engine/test_distributed.py uses it too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mol_engine.distributed import join_world  # noqa: E402
from mol_engine.spec import JobSpec  # noqa: E402
from mol_engine.spec_file import read_spec_file  # noqa: E402
from mol_engine.train import setup_run, train_step  # noqa: E402

KEYS = ("train/loss", "train/domain_ce", "train/general_kl", "train/grad_norm")
# glibc's mmap threshold fixed at 1 MiB in every run measured, so that a freed large buffer goes back to the system
# and resident memory follows what is alive: with its default (a threshold that rises to the largest block freed),
# the buffers of gloo's CPU all-gathers stay resident once freed (about +150 MiB per rank for the 26M-parameter
# model's check forward), which measures glibc, not what the engine holds.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def local_bytes(tensors) -> int:
    """Bytes of ``tensors`` held by this process (a DTensor counts its local shard)."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``: resident now, ``VmHWM``: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def setup_rss(spec_path: Path, out: Path, world) -> dict[str, float]:
    """Build the run of ``spec_path`` (model, reference, data, optimizer: ``setup_run``, no step) and measure this
    process's peak resident memory above what it held before (after the imports, the model's modeling code
    included, and the process group), in MiB;
    also the largest share of any parameter's rows (model and reference) this rank holds."""
    import gc

    from mol_engine.sharded_load import meta_model

    spec = JobSpec.model_validate(read_spec_file(spec_path))
    meta_model(spec.base_model, torch.float32)  # imports its modeling code (~120 MiB) before the baseline
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the resident size now
    before = status_kib("VmRSS")
    run = setup_run(spec, out, world=world)
    peak = status_kib("VmHWM")
    frozen = getattr(run.reference, "model", None)
    layers = [m for m in frozen.modules() if m is not frozen and hasattr(m, "unshard")] if frozen is not None else []
    # the reference's root group (embeddings, norm, head) stays gathered for good: its layers are what it shards
    tensors = [*run.model.parameters(), *(p for layer in layers for p in layer.parameters())]
    share = max(local_bytes([t]) / (t.numel() * t.element_size()) for t in tensors)
    del run, frozen, layers, tensors
    gc.collect()
    return {"setup_peak_rss_mib": (peak - before) / 1024, "largest_param_share": share}


def watch_micro_batches(run) -> list[dict[str, float]]:
    """Before each forward of the step module, the share of trainable parameters that have a gradient and the
    share of gradient elements this rank holds (a DTensor counts its shard): at the second micro-batch of a step,
    under FSDP, every gradient is there and sharded (reduce-scattered after each micro-batch's backward)."""
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    seen: list[dict[str, float]] = []

    def look(*_) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        held = sum((g.to_local() if hasattr(g, "to_local") else g).numel() for g in grads)
        seen.append({"with_grad": len(grads) / len(params), "grad_share": held / sum(p.numel() for p in params)})

    run.step_losses.register_forward_pre_hook(look)
    return seen


def reference_prefetches(run) -> bool:
    """Whether, in a forward of a sharded frozen reference, every decoder layer after the first finds its all-gather
    already issued (prefetched by the layer before) when its own forward starts (True where there is nothing to
    prefetch: one process, or no frozen copy). Every rank calls it: the forward is a collective."""
    from mol_engine.distributed import is_sharded

    frozen = getattr(run.reference, "model", None)
    if frozen is None or not is_sharded(frozen):
        return True
    layers = [m for m in frozen.modules() if is_sharded(m) and m is not frozen]  # its decoder layers, in order
    issued: list[bool] = []

    def look(layer, *_) -> None:  # before FSDP's own pre-forward (prepend), which would issue it now
        issued.append(layer._get_fsdp_state()._fsdp_param_group._all_gather_result is not None)

    hooks = [layer.register_forward_pre_hook(look, prepend=True) for layer in layers]
    ids = torch.arange(2 * 8).reshape(2, 8) % 100
    run.reference.hidden(ids, torch.ones_like(ids))
    for hook in hooks:
        hook.remove()
    return len(issued) == len(layers) and all(issued[1:])


def worker(spec_path: Path, out: Path, rss_spec: Path | None = None) -> None:
    """Train the spec's ``max_steps`` steps as this rank; write ``out/rank-R.json``: the curve, the bytes held, what
    the step module saw before each micro-batch (:func:`watch_micro_batches`), whether the reference prefetches,
    and, given ``rss_spec``, the peak memory of setting that run up first (:func:`setup_rss`)."""
    spec = JobSpec.model_validate(read_spec_file(spec_path))
    world = join_world("cpu")
    try:
        rss = setup_rss(rss_spec, out / "rss", world) if rss_spec else {}
        run = setup_run(spec, out, world=world)
        micro = watch_micro_batches(run)
        curve = [{k: v for k, v in train_step(run, step).items() if k in KEYS} for step in range(1, spec.max_steps + 1)]
        states = [t for s in run.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        held = {"params": local_bytes(run.model.parameters()), "optimizer": local_bytes(states)}
        (out / f"rank-{world.rank}.json").write_text(json.dumps({
            "curve": curve, "bytes": held, "micro_batches": micro, "reference_prefetch": reference_prefetches(run),
            "rss": rss}))
    finally:
        world.close()


def run_curve(spec: JobSpec, out: Path, nproc: int, rss_spec: JobSpec | None = None) -> list[dict]:
    """Each rank's curve and bytes held, training ``spec`` (its ``batch_size`` per process) in ``nproc`` processes;
    with ``rss_spec``, each rank first sets that run up alone and measures its peak memory (:func:`setup_rss`)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(write_spec(spec, out / "spec.yaml")),
               str(out)]
    if rss_spec is not None:
        command += ["--rss-spec", str(write_spec(rss_spec, out / "rss-spec.yaml"))]
    if nproc > 1:
        command[1:2] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), command[1]]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **MALLOC_ENV}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{nproc}-process run failed:\n{done.stderr[-3000:]}")
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(nproc)]


def write_spec(spec: JobSpec, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def rss_ratio(single: list[dict], sharded: list[dict]) -> float:
    """``fsdp_rank_peak_rss_ratio``: the largest rank's peak memory above its baseline while setting up model,
    reference and optimizer, over the single process's (runs given ``rss_spec``)."""
    return max(r["rss"]["setup_peak_rss_mib"] for r in sharded) / single[0]["rss"]["setup_peak_rss_mib"]


def wide_model(root: Path, tokenizer_dir: Path, hidden: int, layers: int) -> Path:
    """A random Llama under ``root/wide-model`` with ``tokenizer_dir``'s tokenizer (tied embeddings, 4·hidden/1.45
    MLP width): large enough (hidden 512 x 8 layers: 26M parameters; 1024 x 10: 127M) that its weights dominate
    what a process holds besides them."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from mol_engine.demo import tiny_llama_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_llama_config(len(tokenizer), hidden_size=hidden, num_layers=layers, num_heads=hidden // 64,
                               intermediate_size=int(hidden * 2.75), max_position_embeddings=256,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "wide-model", safe_serialization=True)
    tokenizer.save_pretrained(root / "wide-model")
    return root / "wide-model"


def compare(single: list[dict], sharded: list[dict]) -> dict[str, float]:
    """The largest relative difference of loss, domain CE and gradient norm over the steps; the largest absolute
    difference of the general KL (near 0 in the first steps, so relative differences there are float32 noise);
    and the largest rank's parameter + optimizer bytes over the single process's."""
    maxrel = kl_maxabs = 0.0
    for a, b in zip(single[0]["curve"], sharded[0]["curve"], strict=True):
        for key in ("train/loss", "train/domain_ce", "train/grad_norm"):
            maxrel = max(maxrel, abs(b[key] - a[key]) / max(abs(a[key]), 1e-12))
        kl_maxabs = max(kl_maxabs, abs(b.get("train/general_kl", 0.0) - a.get("train/general_kl", 0.0)))
    held = max(sum(r["bytes"].values()) for r in sharded) / sum(single[0]["bytes"].values())
    return {"fsdp_vs_single_curve_maxrel": maxrel, "fsdp_vs_single_kl_maxabs": kl_maxabs,
            "fsdp_rank_memory_ratio": held}


def tiny_setup(root: Path) -> tuple[Path, dict[str, Path]]:
    """A tiny random Llama directory (tied embeddings) and domain / general JSONL corpora under ``root``."""
    import random

    from transformers import LlamaForCausalLM

    from mol_engine.demo import build_tokenizer, tiny_llama_config

    rng = random.Random(0)
    words = "the river model light north stone garden window paper quiet music winter table letter".split()
    general = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) + "." for _ in range(120)]
    domain = [f"Question: What is {a} plus {b}?\nAnswer: {a + b}" for a in range(10) for b in range(10)]
    tokenizer = build_tokenizer(general + domain, vocab_size=320)
    config = tiny_llama_config(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                               max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    files = {}
    for name, docs in (("domain", domain), ("general", general)):
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return root / "model", files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"))
    parser.add_argument("--rss-spec", type=Path, help="(with --worker) set this run up first, measuring memory")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), args.rss_spec)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model, files = tiny_setup(Path(tmp))
        spec = JobSpec(base_model=str(model), domain_data=[str(files["domain"])], general_data=[str(files["general"])],
                       seq_len=32, batch_size=8, grad_accum=2, max_steps=args.steps, warmup_steps=0, lr=1e-3,
                       precision="fp32", device="cpu", eval_every=10_000, save_every=10_000, distributed="fsdp")
        single = run_curve(spec, Path(tmp) / "one", 1)
        sharded = run_curve(spec.model_copy(update={"batch_size": 4}), Path(tmp) / "two", 2)
    print(json.dumps(compare(single, sharded) | {"steps": args.steps, "processes": 2, "device": "cpu"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
