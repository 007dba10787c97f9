"""The pre-flight estimate (``mol_engine/estimate.py``) against measured peaks and step times on this CPU.

    .venv/bin/python bench/estimate_check.py [--docs docs] [--quick] [--fit]

Each shape (model size, LoRA or full, exact or cached reference, checkpointing, batch size) runs alone in a fresh
process: imports, then the RSS baseline, then ``train.setup_run`` (model, reference, corpora, cached targets,
optimizer), then the peak is reset (Linux ``clear_refs``) and ``--steps`` training steps run. The measured peak is
the highest RSS during the steps less the baseline: what the run holds while it trains (weights, reference,
optimizer state, the corpora's maps) and what a step adds (activations, gradients, loss chunks), without the
interpreter and libraries every process carries alike, and without the setup's transients (the cached
reference's build loads the base once and frees it: a different moment than the one the estimate models). glibc
is told to return every block over 1 MiB at once (``memory.PROBE_ENV``), so that RSS follows the live tensors.
The step time is the median of the steps after the first (which allocates AdamW's state).

With ``--fit`` the activation scale, the constant overhead and the CPU's achieved FLOP/s and
per-step overhead are fitted (least squares on the relative errors) and printed for ``mol_engine/estimate.py``;
without it the module's own constants are checked. The table goes to docs/performance.md (``--docs``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from memory import PROBE_ENV  # noqa: E402
from report import replace_section  # noqa: E402

from mol_engine.estimate import DEVICES, estimate, memory_parts, model_shape, step_flops  # noqa: E402
from mol_engine.spec import JobSpec  # noqa: E402

# model name -> Llama config fields (untied head, as large Llamas)
MODELS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=352, vocab_size=2048),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=688,
                  vocab_size=8192),
    "wide": dict(hidden_size=384, num_hidden_layers=3, num_attention_heads=6, intermediate_size=1536,
                 vocab_size=4096),
}
# (model, finetune, reference, checkpointing, batch size, seq_len); method mol throughout (the reference matters)
SHAPES = [
    ("tiny", "full", "exact", False, 4, 128),
    ("tiny", "full", "exact", False, 16, 128),
    ("small", "full", "exact", False, 4, 256),
    ("small", "full", "exact", False, 8, 256),
    ("small", "full", "exact", False, 16, 256),
    ("small", "full", "cached", False, 8, 256),
    ("small", "full", "exact", True, 16, 256),
    ("small", "lora", "exact", False, 8, 256),
    ("small", "lora", "exact", False, 16, 256),
    ("small", "lora", "exact", True, 16, 256),
    ("small", "full", "exact", False, 4, 1024),
    ("wide", "full", "exact", False, 8, 256),
    ("wide", "lora", "cached", False, 8, 256),
    ("wide", "full", "exact", True, 8, 256),
]
QUICK = [SHAPES[0], SHAPES[3], SHAPES[7]]
WORDS = ("the river model light north stone garden window paper quiet music winter table letter small green open "
         "under over after before city morning evening story road").split()


def build(root: Path) -> dict[str, str]:
    """The models of :data:`MODELS` (random init, a small BPE tokenizer) and domain / general corpora."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mol_engine.demo import build_tokenizer

    rng = random.Random(0)
    docs = {name: [" ".join(rng.choice(WORDS) for _ in range(rng.randint(200, 600))) + "." for _ in range(n)]
            for name, n in (("domain", 300), ("general", 150))}
    paths = {}
    for name, rows in docs.items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
        paths[name] = str(path)
    tokenizer = build_tokenizer(docs["general"][:100], vocab_size=512)
    import torch

    for name, fields in MODELS.items():
        path = root / name
        config = LlamaConfig(**fields, num_key_value_heads=fields["num_attention_heads"], tie_word_embeddings=False,
                             max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[name] = str(path)
    return paths


def spec_of(paths: dict[str, str], shape: tuple) -> JobSpec:
    model, finetune, reference, checkpointing, batch, seq = shape
    return JobSpec(name="estimate-check", base_model=paths[model], domain_data=[paths["domain"]],
                   general_data=[paths["general"]], method="mol", finetune=finetune, reference=reference,
                   gradient_checkpointing=checkpointing, batch_size=batch, seq_len=seq, lr=1e-4, warmup_steps=0,
                   max_steps=1_000_000, eval_every=1_000_000, save_every=1_000_000, device="cpu", seed=0)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def probe(config: dict) -> dict:
    """In the fresh process: set the run up, reset the peak, train ``steps`` steps; the peak over the baseline."""
    import transformers.models.llama.modeling_llama  # noqa: F401

    from mol_engine.callbacks import Callback
    from mol_engine.train import setup_run, train_step

    spec = JobSpec.model_validate(config["spec"])
    baseline = _status_mib("VmRSS")
    run = setup_run(spec, Path(config["out"]), Callback())
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the setup's transients are not the step's
    times = []
    for step in range(1, config["steps"] + 1):
        started = time.perf_counter()
        train_step(run, step)
        times.append(time.perf_counter() - started)
    return {"peak_mib": _status_mib("VmHWM") - baseline, "step_s": statistics.median(times[1:] or times),
            "held_mib": _status_mib("VmRSS") - baseline}


def measure(paths: dict[str, str], shape: tuple, out: Path, steps: int) -> dict:
    spec = spec_of(paths, shape)
    config = {"spec": spec.model_dump(mode="json"), "out": str(out), "steps": steps}
    result = subprocess.run([sys.executable, __file__, "--probe", json.dumps(config)], capture_output=True,
                            text=True, check=False, env=os.environ | PROBE_ENV)
    if result.returncode:
        raise RuntimeError(f"probe {shape} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def fit(rows: list[dict]) -> dict:
    """The activation scale and the overhead (memory), FLOP/s, per-step seconds and LoRA's share of the rate (time),
    minimising relative errors."""
    import numpy as np
    from scipy.optimize import least_squares

    cpu = DEVICES["cpu"]

    def memory_errors(x):
        return [sum(memory_parts(r["spec"], r["shape"], cpu, (x[0], x[1] * 2**20))[0].values())
                / (r["peak_mib"] * 2**20) - 1 for r in rows]

    mem = least_squares(memory_errors, x0=[1, 32], bounds=([0, 0], [20, 500]), diff_step=1e-3)
    full = [r for r in rows if r["spec"].finetune == "full"]
    flops = np.array([step_flops(r["spec"], r["shape"]) for r in full])
    seconds = np.array([r["step_s"] for r in full])
    timing = least_squares(lambda x: (x[1] + flops / (x[0] * 1e9)) / seconds - 1, x0=[20, 0.01],
                           bounds=([0.1, 0], [1e4, 10]))
    lora = [step_flops(r["spec"], r["shape"]) / (timing.x[0] * 1e9 * max(r["step_s"] - timing.x[1], 1e-9))
            for r in rows if r["spec"].finetune == "lora"]
    return {"activation_scale": mem.x[0], "overhead_mib": mem.x[1],
            "gflops": timing.x[0], "step_overhead_s": timing.x[1],
            "lora_rate": statistics.median(lora) if lora else float("nan")}


# The one GPU measurement there is (docs/performance.md, "On a GPU", 2026-11-29, an H200, code of then): a random-init
# Qwen2.5-0.5B shape, seq 2048, batch 8, full fine-tuning; peak GiB by variant. Loss chunks were then ~110 positions.
H200_POINT = {"shape": {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
                        "tie_word_embeddings": True},
              "peaks": {("cpt", "exact"): 31.58, ("mol", "exact"): 32.52, ("mol", "cached"): 31.58}, "chunk": 110}


def gpu_point() -> list[str]:
    """The CUDA bytes per activation element that make the model give the H200's CPT peak, and the other two
    variants' estimates against theirs with it."""
    from dataclasses import replace

    import mol_engine.estimate as model

    shape = model_shape(H200_POINT["shape"])

    def spec(method: str, reference: str) -> JobSpec:
        return JobSpec(base_model="m", domain_data=["d"], general_data=["g"], method=method, reference=reference,
                       seq_len=2048, batch_size=8, loss_chunk_tokens=H200_POINT["chunk"])

    def peak(method: str, reference: str, element: float) -> float:
        saved = dict(model.ACTIVATION_BYTES)
        model.ACTIVATION_BYTES["cuda"] = element
        try:
            return estimate(spec(method, reference), shape, replace(DEVICES["H200"])).peak_bytes / 2**30
        finally:
            model.ACTIVATION_BYTES.update(saved)

    target = H200_POINT["peaks"][("cpt", "exact")]
    low, high = 0.5, 8.0
    for _ in range(60):  # the peak grows with the element's bytes: bisect
        middle = (low + high) / 2
        low, high = (middle, high) if peak("cpt", "exact", middle) < target else (low, middle)
    lines = [f"CUDA bytes per activation element fitted to the H200's CPT peak ({target} GiB): {low:.3f}"]
    for (method, reference), measured in H200_POINT["peaks"].items():
        est = peak(method, reference, low)
        lines.append(f"H200 {method}/{reference}: estimated {est:.2f} GiB, measured {measured} GiB, ratio "
                     f"{est / measured:.3f}; with the module's {model.ACTIVATION_BYTES['cuda']}: "
                     f"{peak(method, reference, model.ACTIVATION_BYTES['cuda']):.2f} GiB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=Path, help="write the table into DOCS/performance.md")
    parser.add_argument("--quick", action="store_true", help="three shapes")
    parser.add_argument("--fit", action="store_true", help="fit the constants and print them")
    parser.add_argument("--gpu-point", action="store_true", help="only fit the CUDA bytes per activation element "
                        "to the one H200 measurement (no run)")
    parser.add_argument("--steps", type=int, default=3, help="steps per shape (the first allocates AdamW's state)")
    parser.add_argument("--measured", type=Path, help="a JSON file of measurements: read if it exists (no "
                        "shape runs again), else written as the shapes run")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return
    if args.gpu_point:
        print("\n".join(gpu_point()))
        return
    started, load = time.time(), os.getloadavg()
    shapes = QUICK if args.quick else SHAPES
    saved = json.loads(args.measured.read_text()) if args.measured and args.measured.is_file() else None
    results = saved or {}
    with tempfile.TemporaryDirectory(prefix="estimate-check-") as tmp:
        paths = build(Path(tmp)) if saved is None else {name: name for name in [*MODELS, "domain", "general"]}
        for i, shape in enumerate(shapes):
            key = json.dumps(shape)
            if key not in results:
                results[key] = measure(paths, shape, Path(tmp) / f"run-{i}", args.steps) | {
                    "load": os.getloadavg()[0]}
                if args.measured:
                    args.measured.write_text(json.dumps(results, indent=1))
            measured = results[key]
            print(f"{shape}: peak {measured['peak_mib']:.1f} MiB, step {measured['step_s']:.3f} s, load "
                  f"{measured['load']:.1f}", flush=True)
    rows = [{"name": shape, "spec": spec_of(paths, shape), "shape": model_shape(MODELS[shape[0]]),
             **results[json.dumps(shape)]} for shape in shapes if json.dumps(shape) in results]
    fitted = fit(rows) if args.fit else None
    if fitted:
        print("fitted:", json.dumps({k: round(v, 4) for k, v in fitted.items()}))
    lines, worst = [], 0.0
    for r in rows:
        est = estimate(r["spec"], r["shape"], DEVICES["cpu"])
        mem_ratio = est.peak_bytes / 2**20 / r["peak_mib"]
        time_ratio = est.step_s / r["step_s"]
        worst = max(worst, abs(mem_ratio - 1))
        model, finetune, reference, ckpt, batch, seq = r["name"]
        params = r["shape"].params / 1e6
        lines.append(f"| {model} ({params:.1f}M) | {finetune} | {reference} | {'on' if ckpt else 'off'} | {batch} x "
                     f"{seq} | {est.peak_bytes / 2**20:.0f} | {r['peak_mib']:.0f} | {mem_ratio:.2f} | "
                     f"{est.step_s:.3f} | {r['step_s']:.3f} | {time_ratio:.2f} | {r['load']:.1f} |")
    load_after = os.getloadavg()
    head = ("| model | fine-tuning | reference | checkpointing | batch x seq | estimated peak MiB | measured peak "
            "MiB | ratio | estimated step s | measured step s | ratio | load average |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    table = head + "\n" + "\n".join(lines)
    print(table)
    summary = (f"Worst memory error {worst:.0%} over {len(rows)} shapes (goal: 25%). MoL throughout, fp32, 3 steps per "
               f"shape in a fresh process; peak = highest RSS during the steps less the RSS before setup; step time "
               f"= median of the steps after the first, measured at the load average in the last column (2 cores, "
               f"shared), so the time ratios say how load stretches a step. "
               + (f"Measured in {time.time() - started:.0f} s, load {load[0]:.2f} before, {load_after[0]:.2f} after."
                  if saved is None else f"Measurements read from {args.measured}."))
    print(summary)
    if args.docs:
        text = (f"## Pre-flight estimate against measurement (`python bench/estimate_check.py`)\n\n{table}\n\n"
                f"{summary}")
        replace_section(args.docs / "performance.md", "estimate_check", text)


if __name__ == "__main__":
    main()
