"""What MoL costs per step, measured side by side: against CPT, against HF Trainer and a bare loop, and as it scales.

    .venv/bin/python bench/step_cost.py [--docs docs] [--quick]

1. Throughput, interleaved in one process on the same model, batch shape and data (round-robin, S steps per
   variant per round, the first round discarded as warm-up): the engine's CPT, MoL (exact and cached reference)
   with full fine-tuning and with LoRA, a bare PyTorch loop and Hugging Face ``Trainer``.
2. Peak memory: each variant alone in a fresh process (peak RSS during training minus the RSS before the run
   was set up), since one process's peak cannot be split between variants. CPT, like every run that does not
   train against the base, holds no reference while training; MoL holds a frozen copy in the compute dtype
   (fp32 here), MoL with the cached reference only the cache's memory map.
3. Scaling: tokens/s and peak memory of CPT and MoL as the sequence doubles (256 -> 2048) and as the
   vocabulary grows (8k -> 128k), and the MoL-CPT memory gap next to the size of the fp32 logits it never keeps.
4. The cached reference's fidelity: the demo MoL run with the exact reference and with the cached top-k one.

Every figure is printed as a ratio with its inputs; the last line is one JSON object; ``docs/performance.md``
is written from the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from memory import PROBE_ENV
from report import replace_section

from mol_engine.batches import MixedBatches
from mol_engine.callbacks import Callback
from mol_engine.demo import build_demo, tiny_llama_config
from mol_engine.reference import OnDemandReference
from mol_engine.spec import JobSpec
from mol_engine.train import setup_run, train, train_step

TARGETS = {  # key -> (lowest acceptable, highest acceptable)
    "mol_cpt_throughput_full": (0.83, None), "mol_cpt_memory_full": (None, 1.30),
    "mol_cached_cpt_memory_full": (None, 1.05),
    "mol_cpt_throughput_lora": (0.78, None), "mol_cpt_memory_lora": (None, 1.05),
    "cached_cpt_throughput": (1.0, None), "cpt_vs_hf_trainer_throughput": (1.0, None),
    "engine_vs_bare_loop_throughput": (0.95, None),
}


# name -> (method, finetune, reference): the runs whose peak memory is measured, one fresh process each
MEMORY_PROBES = {"cpt_full": ("cpt", "full", "exact"), "mol_full": ("mol", "full", "exact"),
                 "mol_cached_full": ("mol", "full", "cached"), "cpt_lora": ("cpt", "lora", "exact"),
                 "mol_lora": ("mol", "lora", "exact")}


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture model built from a config (untied head) and the batch it trains on."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 688
    vocab: int = 8192
    seq_len: int = 256
    batch_size: int = 8

    @property
    def tokens(self) -> int:
        return self.seq_len * self.batch_size

    def describe(self) -> str:
        return (f"Llama h={self.hidden} layers={self.layers} vocab={self.vocab}, batch {self.batch_size} x "
                f"{self.seq_len} tokens")


# ---------------------------------------------------------------- setup


def make_model(root: Path, shape: Shape, demo: Path) -> Path:
    """A randomly initialised model of ``shape`` with the demo tokenizer, saved under ``root`` (built once)."""
    from transformers import LlamaForCausalLM

    path = root / f"model-h{shape.hidden}-l{shape.layers}-v{shape.vocab}"
    if (path / "config.json").is_file():
        return path
    config = tiny_llama_config(shape.vocab, hidden_size=shape.hidden, num_layers=shape.layers, num_heads=shape.heads,
                               intermediate_size=shape.intermediate, max_position_embeddings=4096,
                               tie_word_embeddings=False)  # untied, as large Llamas are
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / "model" / name, path / name)
    return path


def make_data(root: Path, demo: Path) -> dict[str, str]:
    """Copies of the demo corpora, so the cached reference is built fresh (and measured) in every run."""
    data = root / "data"
    data.mkdir(exist_ok=True)
    for name in ("domain.jsonl", "general.jsonl"):
        shutil.copy(demo / name, data / name)
    return {"domain": str(data / "domain.jsonl"), "general": str(data / "general.jsonl")}


def engine_spec(model: Path, data: dict[str, str], shape: Shape, method: str, finetune: str = "full",
                reference: str = "exact") -> JobSpec:
    """A spec that trains without evaluating or saving (those are periodic, not per-step costs)."""
    return JobSpec(name=f"{method}-{finetune}-{reference}", base_model=str(model), domain_data=[data["domain"]],
                   general_data=[data["general"]], method=method, finetune=finetune, reference=reference,
                   reference_top_k=64, seq_len=shape.seq_len, batch_size=shape.batch_size, lr=1e-4, warmup_steps=0,
                   max_steps=1_000_000, eval_every=1_000_000, save_every=1_000_000, device="cpu", seed=0)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> float:
    """Start peak tracking from here (Linux: clear_refs 5 resets VmHWM); returns the current RSS in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """The highest RSS since :func:`reset_peak_rss`, in MiB."""
    return _status_mib("VmHWM")


# ---------------------------------------------------------------- the variants


class EngineVariant:
    """The engine's own step (:func:`mol_engine.train.train_step`), everything it does per step included."""

    def __init__(self, spec: JobSpec, out: Path) -> None:
        self.events: list[str] = []
        self.run = setup_run(spec, out, _EventLog(self.events))
        self.step = 0

    def timed_steps(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            self.step += 1
            started = time.perf_counter()
            train_step(self.run, self.step)
            times.append(time.perf_counter() - started)
        return times


class _EventLog(Callback):
    """Keeps the run's event messages (the cached reference reports its build time there)."""

    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def on_event(self, event: dict) -> None:
        self.sink.append(event["message"])


def _cpt_rows(run) -> MixedBatches:
    """A fresh copy of the engine CPT run's batch stream: the same rows in the same order."""
    n_domain, n_general = run.spec.rows_per_batch()
    return MixedBatches(run.domain.train, run.general.train, n_domain, n_general, run.spec.seed)


class BareLoop:
    """What a user writes by hand: HF forward with labels, backward, clip, AdamW, cosine schedule."""

    def __init__(self, spec: JobSpec, rows: MixedBatches) -> None:
        from mol_engine.modeling import load_model
        from mol_engine.train import lr_factor

        self.model = load_model(spec.base_model, torch.device("cpu")).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=spec.lr, betas=(0.9, 0.95))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, spec))
        self.rows = rows

    def timed_steps(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            batch = self.rows.next_batch()
            labels = batch.input_ids.masked_fill(~batch.attention_mask, -100)
            loss = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.detach().item()
            times.append(time.perf_counter() - started)
        return times


class HFTrainer:
    """Hugging Face ``Trainer`` on the same model, batch and rows; each round a ``train()`` of n+1 steps."""

    def __init__(self, spec: JobSpec, rows: MixedBatches, out: Path, n_rows: int) -> None:
        from mol_engine.modeling import load_model

        self.model = load_model(spec.base_model, torch.device("cpu"))
        self.spec, self.out = spec, out
        records = []
        while len(records) < n_rows:
            batch = rows.next_batch()
            for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True):
                records.append({"input_ids": ids, "attention_mask": mask.long(),
                                "labels": ids.masked_fill(~mask, -100)})
        self.records = records

    def timed_steps(self, n: int) -> list[float]:
        from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

        ends: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append(time.perf_counter())

        args = TrainingArguments(
            output_dir=str(self.out), per_device_train_batch_size=self.spec.batch_size, max_steps=n + 1,
            learning_rate=self.spec.lr, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0,
            adam_beta2=0.95, weight_decay=0.0, optim="adamw_torch", use_cpu=True, report_to="none",
            logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=False, seed=0)
        trainer = Trainer(model=self.model, args=args, train_dataset=self.records, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # its end-of-training summary is not ours to print
        trainer.train()
        return [b - a for a, b in itertools.pairwise(ends)]  # the first step carries the setup


def interleaved_throughput(variants: dict, shape: Shape, rounds: int, steps: int, log) -> dict[str, list[float]]:
    """Each variant's tokens/s in every round (after a warm-up round), variants run round-robin."""
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds + 1):
        for name, variant in variants.items():
            times = variant.timed_steps(steps)
            if r:
                per_round[name].append(shape.tokens * len(times) / sum(times))
        if r:
            log(f"  round {r}/{rounds}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in per_round.items()) + " tok/s")
    return per_round


def paired_ratio(label: str, key: str, num: list[float], den: list[float], results: dict) -> str:
    """The median over rounds of num/den measured in the same round, printed with both medians."""
    value = statistics.median(a / b for a, b in zip(num, den, strict=True))
    return ratio_line(label, key, statistics.median(num), statistics.median(den),
                      "tok/s (medians; ratio: median of per-round ratios)", results, value)


# ---------------------------------------------------------------- memory probes (one process each)


# Every allocation over 1 MiB gets its own mapping, returned to the OS when freed: peak RSS then follows the live
# tensors rather than how glibc happened to reuse its heap (repeat runs agree within 2 MiB instead of ±30 MiB).
# It slows allocation, so probes measure memory only; throughput is measured in-process, without it.


def probe(config: dict) -> dict:
    """Train ``config`` for a few steps in this process; peak RSS above the pre-setup baseline."""
    shape = Shape(**config["shape"])
    spec = engine_spec(Path(config["model"]), config["data"], shape, config["method"], config["finetune"],
                       config["reference"])
    import peft  # noqa: F401  (imports the run would trigger lazily, kept out of the measurement)
    import transformers.models.llama.modeling_llama  # noqa: F401

    baseline = reset_peak_rss()
    variant = EngineVariant(spec, Path(config["out"]))
    variant.timed_steps(config["steps"])  # step 1 allocates the optimizer state
    return {"peak_mib": peak_rss_mib() - baseline, "held_reference": held_reference(variant.run)}


def held_reference(run) -> str:
    """What ``run`` holds of the base now: the cache, a loaded reference's kind, or 'none'."""
    reference = run.reference
    if isinstance(reference, OnDemandReference) and not reference.resident:
        reference = None
    return getattr(run.cached or reference, "kind", "none")


def run_probe(config: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "--probe", json.dumps(config)], capture_output=True,
                            text=True, check=False, env=os.environ | PROBE_ENV)
    if result.returncode:
        raise RuntimeError(f"memory probe {config['method']}/{config['finetune']} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def logits_mib(rows: int, shape: Shape) -> float:
    """The size of a full fp32 logits tensor over ``rows`` rows of ``shape``."""
    return rows * (shape.seq_len - 1) * shape.vocab * 4 / 2**20


# ---------------------------------------------------------------- the report


def ratio_line(label: str, key: str | None, num: float, den: float, unit: str, results: dict,
               value: float | None = None) -> str:
    """``label: value = num / den unit`` (value defaults to num / den), recorded under ``key``, with its target."""
    value = num / den if value is None else value
    if key:
        results[key] = round(value, 4)
    verdict = ""
    if key in TARGETS:
        low, high = TARGETS[key]
        ok = (low is None or value >= low) and (high is None or value <= high)
        verdict = f"   target {'≥ ' + str(low) if low is not None else '≤ ' + str(high)}: {'PASS' if ok else 'MISS'}"
    return f"{label}: {value:.3f} = {_number(num)} / {_number(den)} {unit}{verdict}"


def _number(x: float) -> str:
    return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.4g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default="docs", help="where performance.md goes ('' for nowhere)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and few steps: a smoke run, not a measurement")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return 0

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    demo = build_demo(log=lambda m: None).root
    head = Shape(hidden=64, layers=2, heads=2, intermediate=128, vocab=4096, seq_len=64, batch_size=4) \
        if args.quick else Shape()
    rounds, steps = (1, 2) if args.quick else (5, 4)
    results: dict[str, float] = {}
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        log(line)

    with tempfile.TemporaryDirectory(prefix="mol-step-cost-") as tmp:
        root = Path(tmp)
        data = make_data(root, demo)
        model = make_model(root, head, demo)
        n_params = _count(model)
        log(f"== 1. Throughput, interleaved: {head.describe()} ({n_params / 1e6:.1f}M parameters), "
            f"{torch.get_num_threads()} CPU threads, fp32, {rounds} rounds x {steps} steps after a warm-up round")
        variants = {
            "cpt_full": EngineVariant(engine_spec(model, data, head, "cpt"), root / "cpt_full"),
            "mol_full": EngineVariant(engine_spec(model, data, head, "mol"), root / "mol_full"),
            "mol_cached_full": EngineVariant(engine_spec(model, data, head, "mol", reference="cached"),
                                             root / "mol_cached"),
            "cpt_lora": EngineVariant(engine_spec(model, data, head, "cpt", "lora"), root / "cpt_lora"),
            "mol_lora": EngineVariant(engine_spec(model, data, head, "mol", "lora"), root / "mol_lora"),
        }
        cache_build = variants["mol_cached_full"].events
        cpt_run = variants["cpt_full"].run
        variants["bare_loop"] = BareLoop(cpt_run.spec, _cpt_rows(cpt_run))
        variants["hf_trainer"] = HFTrainer(cpt_run.spec, _cpt_rows(cpt_run), root / "hf",
                                           n_rows=head.batch_size * (steps + 1) * (rounds + 1) + head.batch_size)
        tps = interleaved_throughput(variants, head, rounds, steps, log)
        say(paired_ratio("MoL/CPT throughput, full fine-tuning (frozen-copy reference)", "mol_cpt_throughput_full",
                         tps["mol_full"], tps["cpt_full"], results))
        say(paired_ratio("MoL/CPT throughput, LoRA (adapter-disabled reference)", "mol_cpt_throughput_lora",
                         tps["mol_lora"], tps["cpt_lora"], results))
        say(paired_ratio("MoL cached top-64 / CPT throughput, full fine-tuning", "cached_cpt_throughput",
                         tps["mol_cached_full"], tps["cpt_full"], results))
        say(paired_ratio("MoL cached / MoL exact throughput", "cached_exact_throughput", tps["mol_cached_full"],
                         tps["mol_full"], results))
        say(paired_ratio("engine CPT / Hugging Face Trainer throughput", "cpt_vs_hf_trainer_throughput",
                         tps["cpt_full"], tps["hf_trainer"], results))
        say(paired_ratio("engine CPT / bare PyTorch loop throughput", "engine_vs_bare_loop_throughput",
                         tps["cpt_full"], tps["bare_loop"], results))
        built = next(m for m in cache_build if "cached the reference" in m)
        say(f"cached reference build: {built}")
        results |= {f"tokens_per_s_{name}": round(statistics.median(values), 1) for name, values in tps.items()}
        del variants, cpt_run

        log(f"== 2. Peak memory, one fresh process per variant: {head.describe()}")
        memory = {}
        for name, (method, finetune, reference) in MEMORY_PROBES.items():
            out = run_probe({"model": str(model), "data": data, "shape": asdict(head), "method": method,
                             "finetune": finetune, "reference": reference, "steps": 3,
                             "out": str(root / f"mem-{name}")})
            memory[name] = out["peak_mib"]
            log(f"  {name}: {memory[name]:,.0f} MiB above the pre-run baseline, holding reference "
                f"{out['held_reference']} while training")
        say(ratio_line("MoL/CPT peak memory, full fine-tuning (MoL: fp32 frozen copy; CPT: no reference)",
                       "mol_cpt_memory_full", memory["mol_full"], memory["cpt_full"], "MiB", results))
        say(ratio_line("MoL/CPT peak memory, LoRA", "mol_cpt_memory_lora", memory["mol_lora"], memory["cpt_lora"],
                       "MiB", results))
        say(ratio_line("MoL cached / CPT peak memory, full fine-tuning (neither holds the base while training)",
                       "mol_cached_cpt_memory_full", memory["mol_cached_full"], memory["cpt_full"], "MiB", results))
        results["cached_cpt_memory"] = results["mol_cached_cpt_memory_full"]  # its name before the goal was set
        results |= {f"peak_mib_{name}": round(value, 1) for name, value in memory.items()}

        scaling = scale_study(root, data, demo, args.quick, say, log)
        results["scaling"] = scaling
        fidelity = cached_fidelity(root, demo, args.quick, say, log)
        results["cached_fidelity"] = fidelity

    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.docs:
        write_report(Path(args.docs), head, results, lines)
    print(json.dumps(results))
    return 0


def _count(model_dir: Path) -> int:
    """Parameters in a saved model directory."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 (not a dict)


def scale_study(root: Path, data: dict[str, str], demo: Path, quick: bool, say, log) -> list[dict]:
    """CPT and MoL tokens/s (interleaved, in this process) and peak memory (one process each) as sequence length
    and vocabulary grow."""
    small = Shape(hidden=128, layers=2, heads=4, intermediate=344, vocab=8192, seq_len=256, batch_size=2)
    seqs, vocabs = ([64, 128], [2048, 4096]) if quick else ([256, 512, 1024, 2048], [8192, 32768, 131072])
    points = [replace(small, seq_len=s) for s in seqs] + [replace(small, seq_len=seqs[0], vocab=v) for v in vocabs[1:]]
    points.append(replace(small, seq_len=seqs[-1], vocab=vocabs[-1]))
    log(f"== 3. Scaling: Llama h={small.hidden} layers={small.layers}, batch {small.batch_size} rows (1 domain + 1 "
        "general), full fine-tuning; tokens/s interleaved here, peak memory one fresh process each")
    rows = []
    for shape in points:
        model = make_model(root, shape, demo)
        point = {"seq_len": shape.seq_len, "vocab": shape.vocab}
        variants = {method: EngineVariant(engine_spec(model, data, shape, method),
                                          root / f"scale-{method}-{shape.seq_len}-{shape.vocab}")
                    for method in ("cpt", "mol")}
        tps = interleaved_throughput(variants, shape, rounds=1 if quick else 2, steps=2, log=lambda m: None)
        del variants
        for method in ("cpt", "mol"):
            out = run_probe({"model": str(model), "data": data, "shape": asdict(shape), "method": method,
                             "finetune": "full", "reference": "exact", "steps": 3,
                             "out": str(root / f"scale-mem-{method}-{shape.seq_len}-{shape.vocab}")})
            point[f"{method}_tokens_per_s"] = round(statistics.median(tps[method]), 1)
            point[f"{method}_peak_mib"] = round(out["peak_mib"], 1)
        weights = _count(model) * 4 / 2**20
        point["reference_weights_mib"] = round(weights, 1)
        point["gap_minus_reference_mib"] = round(point["mol_peak_mib"] - point["cpt_peak_mib"] - weights, 1)
        point["general_logits_fp32_mib"] = round(logits_mib(1, shape), 1)
        rows.append(point)
        log(f"  seq {shape.seq_len:>5} vocab {shape.vocab:>6}: CPT {point['cpt_tokens_per_s']:>7,.0f} tok/s "
            f"{point['cpt_peak_mib']:>6,.0f} MiB | MoL {point['mol_tokens_per_s']:>7,.0f} tok/s "
            f"{point['mol_peak_mib']:>6,.0f} MiB | MoL-CPT minus frozen copy {point['gap_minus_reference_mib']:>5,.0f} "
            f"MiB vs full fp32 logits of the general row {point['general_logits_fp32_mib']:>6,.0f} MiB")
    last = rows[-1]
    gaps = [r["gap_minus_reference_mib"] for r in rows]
    say(ratio_line(f"MoL-CPT peak-memory gap minus the frozen copy at seq {last['seq_len']} x vocab {last['vocab']} / "
                   "the fp32 logits of its general row", None, last["gap_minus_reference_mib"],
                   last["general_logits_fp32_mib"], "MiB", {})
        + f"  (over all points the gap stays within {min(gaps):,.0f}..{max(gaps):,.0f} MiB while tokens x vocabulary "
          f"grows {last['seq_len'] * last['vocab'] / (rows[0]['seq_len'] * rows[0]['vocab']):.0f}x: it is bounded by "
          "the few [chunk, vocab] tensors alive while one chunk's KL is formed)")
    for axis, chosen in (("sequence", [r for r in rows if r["vocab"] == small.vocab]),
                         ("vocabulary", [r for r in rows if r["seq_len"] == seqs[0]])):
        a, b = chosen[0], chosen[-1]
        say(ratio_line(f"CPT tokens/s, {axis} {a['seq_len'] if axis == 'sequence' else a['vocab']} -> "
                       f"{b['seq_len'] if axis == 'sequence' else b['vocab']}", None, b["cpt_tokens_per_s"],
                       a["cpt_tokens_per_s"], "tok/s", {}))
        say(ratio_line(f"MoL/CPT throughput at the largest {axis}", None, b["mol_tokens_per_s"], b["cpt_tokens_per_s"],
                       "tok/s", {}))
    return rows


def cached_fidelity(root: Path, demo: Path, quick: bool, say, log) -> dict:
    """The demo MoL job with the exact reference and with cached top-k ones: final figures side by side."""
    from mol_engine.replicate import demo_spec

    steps = 20 if quick else None  # None: the demo spec's own budget
    (root / "fidelity").mkdir()
    data = make_data(root / "fidelity", demo)
    base = demo_spec("mol", "1:1", steps)
    log(f"== 4. Cached reference fidelity: the demo MoL job (examples/demo-mol.yaml, {base.max_steps} steps), "
        "exact reference vs cached top-k of a 2048-token vocabulary")
    finals = {}
    for name, reference, k in (("exact", "exact", 64), ("cached top-64", "cached", 64),
                               ("cached top-256", "cached", 256)):
        spec = JobSpec(**(base.model_dump() | {"general_data": [data["general"]], "reference": reference,
                                               "reference_top_k": k}))
        started = time.perf_counter()
        result = train(spec, root / f"fidelity-{reference}-{k}")
        finals[name] = {key: v for key, v in result.metrics.items() if key.startswith("eval/")}
        finals[name]["wall_s"] = round(time.perf_counter() - started, 1)
    exact = finals["exact"]
    for name in ("cached top-64", "cached top-256"):
        cached = finals[name]
        for key in ("eval/domain_ppl", "eval/general_ppl", "eval/general_kl"):
            say(ratio_line(f"{name} / exact {key}", None, cached[key], exact[key], "", {}))
        em = (cached["eval/qa_exact_match"] - exact["eval/qa_exact_match"]) * 100
        say(f"{name} - exact eval/qa_exact_match: {em:+.1f} points ({cached['eval/qa_exact_match']:.2f} vs "
            f"{exact['eval/qa_exact_match']:.2f})")
        say(ratio_line(f"{name} / exact wall time of the whole job (cache build and evaluations included)", None,
                       cached["wall_s"], exact["wall_s"], "s", {}))
    return finals


def write_report(docs: Path, head: Shape, results: dict, lines: list[str]) -> None:
    """docs/performance.md from this run's figures."""
    docs.mkdir(parents=True, exist_ok=True)
    table = ["| figure | value | target |", "|---|---|---|"]
    for key, (low, high) in TARGETS.items():
        value = results[key]
        ok = (low is None or value >= low) and (high is None or value <= high)
        target = f"≥ {low}" if low is not None else f"≤ {high}"
        table.append(f"| `{key}` | {value:.3f} | {target} {'✅' if ok else '❌'} |")
    scale = ["| seq len | vocab | CPT tok/s | MoL tok/s | CPT peak MiB | MoL peak MiB | MoL−CPT − frozen copy, MiB "
             "| full fp32 logits of the general row, MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in results["scaling"]:
        scale.append(f"| {r['seq_len']} | {r['vocab']:,} | {r['cpt_tokens_per_s']:,.0f} | {r['mol_tokens_per_s']:,.0f} "
                     f"| {r['cpt_peak_mib']:,.0f} | {r['mol_peak_mib']:,.0f} | {r['gap_minus_reference_mib']:,.0f} "
                     f"| {r['general_logits_fp32_mib']:,.0f} |")
    fid = results["cached_fidelity"]
    fidelity = ["| reference | domain ppl | general ppl | KL to base | QA exact match | wall time |",
                "|---|---|---|---|---|---|"]
    for name, f in fid.items():
        fidelity.append(f"| {name} | {f['eval/domain_ppl']:.3f} | {f['eval/general_ppl']:.2f} | "
                        f"{f['eval/general_kl']:.4f} | {f['eval/qa_exact_match']:.2f} | {f['wall_s']:.0f} s |")
    text = [
        "# Performance: what MoL costs", "",
        f"Produced by `python bench/step_cost.py` in {results['seconds']:.0f} s on this machine "
        f"({os.cpu_count()} CPU cores, fp32). Do not edit by hand; rerun the bench.", "",
        f"Headline shape: {head.describe()}. Throughput is the median over rounds of interleaved runs (every "
        "variant on the same model, batch shape and rows); peak memory is each variant alone in a fresh process "
        "(peak RSS minus the RSS before the run was set up, with glibc told to return every allocation over 1 MiB "
        "to the OS when it is freed, so that RSS follows the live tensors; see `PROBE_ENV`). While training, CPT "
        "holds no reference (its `eval/general_kl` loads the base for each evaluation and frees it), MoL holds "
        "a frozen copy loaded in the compute dtype (fp32 on this CPU: the ideal `mol_cpt_memory_full` is "
        "1 + 4/16 bytes per parameter before activations), and MoL with the cached reference holds only the "
        "cache's memory map; the cached run's peak includes building its cache (the base loaded for the build, "
        "freed before step 1).", "",
        *table, "", "Every ratio with its inputs:", "", "```", *lines, "```", "",
        "## Scaling (full fine-tuning, 1 domain + 1 general row per step)", "", *scale, "",
        "The MoL−CPT gap minus the frozen copy's weights is the reference's hidden states and the few "
        "[chunk, vocab] tensors alive while one chunk's KL is formed, a tensor or two more than a CE chunk holds "
        "(`loss_chunk_tokens`; by default on a CPU a chunk is at most 64 MiB of fp32 logits and 512 positions). It "
        "stays bounded by those chunks as tokens × vocabulary grow, while a kept full-vocabulary fp32 logits "
        "tensor would grow with them: 1 GiB for the general row at seq 2048 × vocab 128k.", "",
        "## Cached reference against the exact one (the demo MoL job)", "", *fidelity, "",
    ]
    replace_section(docs / "performance.md", "step_cost", "\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
