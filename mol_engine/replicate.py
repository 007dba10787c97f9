"""The paper's comparison at demo scale: domain_only, CPT and MoL at several ratios, same seed, data and budget.

    mol replicate [--out runs/replicate] [--docs docs] [--steps N]    (or: python bench/replicate.py)

Writes ``docs/results.md`` (table + plots) and ``docs/results.json`` from the runs themselves.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from .callbacks import Callback, JsonlLogger
from .demo import build_demo
from .spec import JobSpec
from .train import train

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "demo-mol.yaml"
RUNS = [("domain_only", "1:1"), ("cpt", "1:1"), ("mol", "4:1"), ("mol", "2:1"), ("mol", "1:1"), ("mol", "1:2")]
FINAL_KEYS = ["eval/domain_ppl", "eval/general_ppl", "eval/general_kl", "eval/qa_exact_match"]


class _Curves(Callback):
    def __init__(self) -> None:
        self.evals: list[dict] = []

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if "eval/domain_ppl" in metrics:
            self.evals.append({"step": step, **metrics})


def demo_spec(method: str, ratio: str, steps: int | None = None) -> JobSpec:
    """The README's demo spec (examples/demo-mol.yaml) with ``method`` and ``ratio``, on the built demo."""
    from .cli import load_spec, resolve_local

    overrides = [f"method={method}", f"ratio={ratio}", f"name={method}-{ratio.replace(':', 'to')}"]
    if steps:
        overrides.append(f"max_steps={steps}")
    return resolve_local(load_spec(EXAMPLE, overrides))


def run_all(out: Path, steps: int | None = None, log=print) -> list[dict]:
    """Train every configuration of RUNS into ``out``; one result dict per run (final figures and curves)."""
    build_demo(log=log)
    results = []
    for method, ratio in RUNS:
        spec = demo_spec(method, ratio, steps)
        run_dir = out / spec.name
        curves = _Curves()
        started = time.perf_counter()
        result = train(spec, run_dir, [curves, JsonlLogger(run_dir)], resume=True)
        seconds = time.perf_counter() - started
        results.append({"method": method, "ratio": ratio, **{k: result.metrics.get(k) for k in FINAL_KEYS},
                        "wall_s": round(seconds, 1), "curves": curves.evals})
        log(f"{spec.name}: " + ", ".join(f"{k.split('/')[1]}={results[-1][k]:.4g}" for k in FINAL_KEYS) +
            f", {seconds:.0f}s")
    return results


def targets(results: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets at 1:1, each (what, holds, figures)."""
    mol = next(r for r in results if r["method"] == "mol" and r["ratio"] == "1:1")
    cpt = next(r for r in results if r["method"] == "cpt")
    kl = mol["eval/general_kl"] / cpt["eval/general_kl"]
    ppl = mol["eval/domain_ppl"] / cpt["eval/domain_ppl"]
    em = (mol["eval/qa_exact_match"] - cpt["eval/qa_exact_match"]) * 100
    return [("MoL KL-to-base ≤ ¼ of CPT's", kl <= 0.25, f"ratio {kl:.3f}"),
            ("MoL domain perplexity within 5% of CPT's", abs(ppl - 1) <= 0.05, f"ratio {ppl:.3f}"),
            ("MoL QA exact match ≥ CPT's − 2 points", em >= -2, f"difference {em:+.1f} points")]


def plot(results: list[dict], docs: Path) -> list[str]:
    """PNG plots of the eval curves and the trade-off; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = [f"{r['method']} {r['ratio']}" if r["method"] == "mol" else r["method"] for r in results]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, key, title, log in zip(axes.flat, FINAL_KEYS, ["domain perplexity", "general perplexity",
                                   "KL to base on general text (nats/token)", "QA exact match"],
                                   [True, True, False, False], strict=True):
        for r, name in zip(results, label, strict=True):
            ax.plot([p["step"] for p in r["curves"]], [p[key] for p in r["curves"]], marker=".", label=name)
        ax.set(title=title, xlabel="step", yscale="log" if log else "linear")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(docs / "results-curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for r, name in zip(results, label, strict=True):
        base = r["curves"][0]["eval/domain_ppl"]
        xs = [p["eval/general_kl"] for p in r["curves"]]
        ys = [math.log(base / p["eval/domain_ppl"]) for p in r["curves"]]
        ax.plot(xs, ys, marker="o", alpha=0.8, label=name)
    ax.set(xlabel="general drift: KL to the base (nats/token)", ylabel="domain gain: ln(base ppl / ppl)",
           title="Domain gain against general drift (one point per evaluation)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(docs / "results-tradeoff.png", dpi=110)
    plt.close(fig)
    return ["results-curves.png", "results-tradeoff.png"]


def write_report(results: list[dict], docs: Path, steps: int) -> None:
    """docs/results.json (final figures) and docs/results.md (table, targets, plots)."""
    docs.mkdir(parents=True, exist_ok=True)
    finals = [{k: v for k, v in r.items() if k != "curves"} for r in results]
    (docs / "results.json").write_text(json.dumps(finals, indent=2) + "\n")
    images = plot(results, docs)
    lines = ["# Results: MoL against CPT on the demo", "",
             f"Produced by `mol replicate` ({steps} steps each, same seed, data and budget; "
             "spec: `examples/demo-mol.yaml`). Do not edit by hand.", "",
             "| method | ratio | domain ppl | general ppl | KL to base | QA exact match | wall time |",
             "|---|---|---|---|---|---|---|"]
    for r in finals:
        lines.append(f"| {r['method']} | {r['ratio']} | {r['eval/domain_ppl']:.3f} | {r['eval/general_ppl']:.2f} | "
                     f"{r['eval/general_kl']:.4f} | {r['eval/qa_exact_match']:.2f} | {r['wall_s']:.0f} s |")
    lines += ["", "Targets at 1:1:", ""]
    lines += [f"- {'✅' if ok else '❌'} {what}: {figures}" for what, ok, figures in targets(results)]
    lines += ["", *[f"![{name}]({name})" for name in images], ""]
    (docs / "results.md").write_text("\n".join(lines))


def main(out: str = "runs/replicate", docs: str = "docs", steps: int | None = None) -> int:
    """Run everything and write the report; returns 0."""
    results = run_all(Path(out), steps, log=lambda m: print(m, file=sys.stderr))
    write_report(results, Path(docs), steps or demo_spec("mol", "1:1").max_steps)
    for what, ok, figures in targets(results):
        print(f"{'PASS' if ok else 'MISS'} {what}: {figures}")
    return 0
