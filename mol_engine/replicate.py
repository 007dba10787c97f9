"""The paper's comparison at demo scale, run as a sweep: domain_only, CPT and MoL at several ratios, same seed, data
and budget, and the Pareto frontier of domain gain against general drift.

    mol replicate [--out runs/replicate] [--docs docs] [--steps N] [--grid kl_weight=0.5,1,2]
    (or: python bench/replicate.py)

The runs are two grids expanded by :func:`mol_engine.sweep.expand_grid` over the demo spec: the baselines
(:data:`BASELINES`) and MoL over :data:`MOL_GRID`, to which ``--grid`` adds (or replaces) values. Writes
``docs/results.md`` (table, frontier, targets, plots) and ``docs/results.json`` from the runs themselves.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .callbacks import JsonlLogger
from .local_runs import resolve_local, run_dir_name
from .model_card import weight_text
from .run_dir import RunDir
from .spec import JobSpec
from .spec_file import load_spec
from .sweep import Point, SweepError, check_grid, expand_grid, pareto_frontier, point_label, result_point
from .train import train

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "demo-mol.yaml"
BASELINES = {"method": ["domain_only", "cpt"], "ratio": ["1:1"]}  # domain_only draws no general rows at any ratio
MOL_GRID = {"method": ["mol"], "ratio": ["4:1", "2:1", "1:1", "1:2"]}
FINAL_KEYS = ["eval/domain_ppl", "eval/general_ppl", "eval/general_kl", "eval/qa_exact_match"]


def demo_spec(method: str, ratio: str, steps: int | None = None) -> JobSpec:
    """The README's demo spec (examples/demo-mol.yaml) with ``method`` and ``ratio``, on the built demo."""
    overrides = [f"method={method}", f"ratio={ratio}", f"name={method}-{ratio.replace(':', 'to')}"]
    if steps:
        overrides.append(f"max_steps={steps}")
    return resolve_local(load_spec(EXAMPLE, overrides))


def grids(extra: Mapping[str, list] | None = None) -> list[dict[str, list]]:
    """The sweeps replicate runs: the baselines, then MoL over :data:`MOL_GRID` with ``extra`` (e.g. kl_weight
    values, or other ratios) merged in; SweepError if ``extra`` varies the method."""
    extra = dict(extra or {})
    if "method" in extra:
        raise SweepError("grid: replicate fixes the methods (domain_only, CPT, MoL); vary ratio, kl_weight or lr")
    return [BASELINES, {**MOL_GRID, **extra}]


def label(values: Mapping[str, Any]) -> str:
    """A run's name in the report: ``cpt``, ``mol 4:1``, ``mol 1:1 kl_weight=0.5`` (the ratio only for MoL)."""
    words = [str(values["method"])]
    if values["method"] == "mol":
        words.append(str(values["ratio"]))
    words += [f"{key}={value}" for key, value in values.items() if key not in ("method", "ratio")]
    return " ".join(words)


def sweep_points(base: Mapping[str, Any], extra: Mapping[str, list] | None = None) -> list[tuple[dict, dict]]:
    """(grid values, spec dict) of every run: each grid of :func:`grids` expanded over ``base``, all checked before
    any run starts (SweepError names a bad key or point)."""
    return [({key: spec[key] for key in grid}, spec) for grid in grids(extra) for _, spec in expand_grid(base, grid)]


def run_all(out: Path, base: Mapping[str, Any], extra: Mapping[str, list] | None = None,
            log=print) -> list[dict]:
    """Train every point of :func:`sweep_points` into ``out``, reusing complete runs; one result dict per run: its
    label, grid values, kl_weight, final figures, wall time (None for a reused run), the machine's 1-minute load
    average as it ended, and eval curves."""
    results = []
    for values, spec in sweep_points(base, extra):
        run_dir = out / run_dir_name(point_label(values))
        reused = spec["max_steps"] in [m["step"] for m in _evaluations(run_dir)]
        started = time.perf_counter()
        train(JobSpec.model_validate(spec), run_dir, [JsonlLogger(run_dir)], resume=True)
        seconds = time.perf_counter() - started
        curves = _evaluations(run_dir)  # from the file: a reused run trains no step
        result = {"run": label(values), **values, "kl_weight": spec["kl_weight"],
                  "target_general_kl": spec.get("target_general_kl"),
                  **{k: curves[-1].get(k) for k in FINAL_KEYS}, "wall_s": None if reused else round(seconds, 1),
                  "load": round(os.getloadavg()[0], 1), "curves": curves}
        results.append(result)
        log(f"{result['run']}: " + ", ".join(f"{k.split('/')[1]}={result[k]:.4g}" for k in FINAL_KEYS
                                             if result[k] is not None) + f", {wall(result['wall_s'])}")
    return results


def _evaluations(run_dir: Path) -> list[dict]:
    """The evaluation points in ``run_dir/metrics.jsonl`` (none before the run started)."""
    path = RunDir(run_dir).metrics_file
    lines = path.read_text().splitlines() if path.exists() else []
    return [m for m in map(json.loads, lines) if "eval/domain_ppl" in m]


def trade_off(results: list[dict]) -> tuple[list[Point], list[str]]:
    """Each run's point (domain gain and general drift, :func:`mol_engine.sweep.result_point`) and the labels of
    the runs on the Pareto frontier, lowest drift first (:func:`mol_engine.sweep.pareto_frontier`)."""
    points = [result_point(r["run"], r["curves"]) for r in results]
    return points, pareto_frontier(points)


def targets(results: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets, MoL at 1:1 (at CPT's kl_weight) against CPT, each (what, holds, figures); none
    without both runs."""
    cpt = next((r for r in results if r["method"] == "cpt"), None)
    mol = next((r for r in results if r["method"] == "mol" and r["ratio"] == "1:1"
                and r.get("kl_weight") == (cpt or {}).get("kl_weight")), None)
    if cpt is None or mol is None:
        return []
    kl = mol["eval/general_kl"] / cpt["eval/general_kl"]
    ppl = mol["eval/domain_ppl"] / cpt["eval/domain_ppl"]
    em = (mol["eval/qa_exact_match"] - cpt["eval/qa_exact_match"]) * 100
    return [("MoL KL-to-base ≤ ¼ of CPT's", kl <= 0.25, f"ratio {kl:.3f}"),
            ("MoL domain perplexity within 5% of CPT's", abs(ppl - 1) <= 0.05, f"ratio {ppl:.3f}"),
            ("MoL QA exact match ≥ CPT's − 2 points", em >= -2, f"difference {em:+.1f} points")]


def plot(results: list[dict], docs: Path) -> list[str]:
    """PNG plots of the eval curves, the trade-off along training and the Pareto frontier; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in results]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, key, title, log in zip(axes.flat, FINAL_KEYS, ["domain perplexity", "general perplexity",
                                   "KL to base on general text (nats/token)", "QA exact match"],
                                   [True, True, False, False], strict=True):
        for r, name in zip(results, names, strict=True):
            ax.plot([p["step"] for p in r["curves"]], [p.get(key) for p in r["curves"]], marker=".", label=name)
        ax.set(title=title, xlabel="step", yscale="log" if log else "linear")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(docs / "results-curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    for r, name in zip(results, names, strict=True):
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
    plot_pareto(*trade_off(results), docs / "results-pareto.png")
    return ["results-curves.png", "results-tradeoff.png", "results-pareto.png"]


def plot_pareto(points: list[Point], frontier: list[str], path: Path) -> None:
    """Each run's final point, the frontier's runs filled, named in bold and joined in drift order."""
    import matplotlib.pyplot as plt

    shown = [p for p in points if p["gain"] is not None and p["drift"] is not None]
    at = {p["id"]: p for p in shown}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.plot([at[i]["drift"] for i in frontier], [at[i]["gain"] for i in frontier], color="tab:blue", alpha=0.6,
            zorder=1, label="Pareto frontier")
    for p in shown:
        on = p["id"] in frontier
        ax.scatter(p["drift"], p["gain"], s=60, zorder=2, color="tab:blue" if on else "white",
                   edgecolors="tab:blue" if on else "tab:gray")
    if shown and all(p["drift"] > 0 for p in shown):
        ax.set_xscale("log")
    ax.set(xlabel="general drift: KL to the base (nats/token, lower is better)",
           ylabel="domain gain: ln(base ppl / final ppl)", title="Final runs: the Pareto frontier (filled, bold)")
    ax.margins(x=0.15, y=0.12)  # room for the names of the outermost points
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    for p, (dx, dy) in zip(shown, _label_spots(ax, shown), strict=True):
        on = p["id"] in frontier
        ax.annotate(p["id"], (p["drift"], p["gain"]), textcoords="offset points", xytext=(dx, dy), fontsize=9,
                    ha="left" if dx > 0 else "right", fontweight="bold" if on else "normal",
                    color="black" if on else "tab:gray",
                    arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.6} if abs(dy) > 10 else None)
    ax.legend(loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label_spots(ax, shown: list[Point]) -> list[tuple[int, int]]:
    """Where each point's name goes, as an offset in points: the first spot (right, left, below, then higher up)
    whose box overlaps no other marker, no name placed before and stays inside the axes; best gain placed first."""
    to_points = 72 / ax.figure.dpi
    where = [ax.transData.transform((p["drift"], p["gain"])) * to_points for p in shown]
    (left, bottom), (right, top) = ax.bbox.get_points() * to_points
    spots = [(dx, dy) for dy in (3, -13, 14, -24, 25, 36, 47) for dx in (6, -6)]
    boxes = [(x - 5, y - 5, x + 5, y + 5) for x, y in where]  # the markers
    chosen = [spots[0]] * len(shown)

    def box(i: int, dx: int, dy: int) -> tuple[float, float, float, float]:
        x, y = where[i]
        x0 = x + dx if dx > 0 else x + dx - 5.5 * len(shown[i]["id"])  # about 5.5 points a character at size 9
        return x0, y + dy, x0 + 5.5 * len(shown[i]["id"]), y + dy + 10

    def free(b: tuple[float, float, float, float], own: int) -> bool:
        inside = left <= b[0] and b[2] <= right and bottom <= b[1] and b[3] <= top
        return inside and not any(o[0] < b[2] and b[0] < o[2] and o[1] < b[3] and b[1] < o[3]
                                  for j, o in enumerate(boxes) if j != own)

    for i in sorted(range(len(shown)), key=lambda i: -shown[i]["gain"]):
        chosen[i] = next((spot for spot in spots if free(box(i, *spot), i)), spots[0])
        boxes.append(box(i, *chosen[i]))
    return chosen


def write_report(results: list[dict], docs: Path, steps: int, machine: str = "") -> None:
    """docs/results.json (final figures, gain, drift, frontier) and docs/results.md (table, frontier, targets,
    plots); ``machine`` says where the wall times were taken."""
    docs.mkdir(parents=True, exist_ok=True)
    points, frontier = trade_off(results)
    finals = [{**{k: v for k, v in r.items() if k != "curves"}, "gain": p["gain"], "drift": p["drift"],
               "on_frontier": r["run"] in frontier} for r, p in zip(results, points, strict=True)]
    (docs / "results.json").write_text(json.dumps(finals, indent=2) + "\n")
    images = plot(results, docs)
    lines = ["# Results: MoL against CPT on the demo", "",
             f"Produced by `mol replicate` ({steps} steps each, same seed, data and budget; "
             f"spec: `examples/demo-mol.yaml`){machine}. Do not edit by hand.", "",
             "| method | ratio | KL weight | domain ppl | general ppl | KL to base | QA exact match | domain gain "
             "| Pareto | wall time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in finals:
        weight = weight_text(r) if r["method"] == "mol" and r.get("kl_weight") is not None else "–"
        gain = "–" if r["gain"] is None else f"{r['gain']:.4f}"
        lines.append(f"| {r['method']} | {r['ratio']} | {weight} | {r['eval/domain_ppl']:.3f} | "
                     f"{r['eval/general_ppl']:.2f} | {r['eval/general_kl']:.4f} | {r['eval/qa_exact_match']:.2f} | "
                     f"{gain} | {'✓' if r['on_frontier'] else ''} | {wall(r['wall_s'])} |")
    lines += ["", "Domain gain is ln(base domain ppl / final domain ppl); drift is the final KL to the base on "
              "held-out general text. On the Pareto frontier (no other run has a higher gain and a lower drift), "
              "lowest drift first: " + ", ".join(f"**{name}**" for name in frontier) + "."]
    checks = targets(results)
    lines += ["", "Targets, MoL 1:1 against CPT:", ""] if checks else []
    lines += [f"- {'✅' if ok else '❌'} {what}: {figures}" for what, ok, figures in checks]
    lines += ["", *[f"![{name}]({name})" for name in images], ""]
    (docs / "results.md").write_text("\n".join(lines))


def wall(seconds: float | None) -> str:
    """``54 s``, or ``reused`` for a run complete before this replicate began."""
    return "reused" if seconds is None else f"{seconds:.0f} s"


def machine_note(loads: list[float]) -> str:
    """``; wall times on 2 CPU cores, 1-minute load average 2.4 to 3.6 as the runs ended (a busy, shared
    machine)``: where the times were taken; a load above the core count means other work shared the machine."""
    import torch

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    busy = " (a busy, shared machine)" if max(loads) > (os.cpu_count() or 1) else ""
    return (f"; wall times on {where}, 1-minute load average {min(loads):.1f} to {max(loads):.1f} as the runs "
            f"ended{busy}")


def main(out: str = "runs/replicate", docs: str = "docs", steps: int | None = None,
         grid: Mapping[str, list] | None = None) -> int:
    """Run every sweep point and write the report; returns 0. A bad ``grid`` is refused (SweepError) before the
    demo is built."""
    for each in grids(grid):
        check_grid(each)
    spec = demo_spec("mol", "1:1", steps)
    base = spec.model_dump(mode="json") | {"name": "demo"}
    results = run_all(Path(out), base, grid, log=lambda m: print(m, file=sys.stderr))
    write_report(results, Path(docs), spec.max_steps, machine_note([r["load"] for r in results]))
    for what, ok, figures in targets(results):
        print(f"{'PASS' if ok else 'MISS'} {what}: {figures}")
    return 0
