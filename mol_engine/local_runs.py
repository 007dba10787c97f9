"""Training on this machine, as ``mol train``, ``mol sweep`` and ``mol replicate`` do: ``demo:NAME`` references
resolved into the demo directory, the JSONL and console loggers, a summary of the run, and a sweep's runs one after
another with its Pareto frontier written to ``sweep.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .run_dir import RunDir
from .spec import JobSpec

if TYPE_CHECKING:
    from .train import TrainResult

DEMO_PREFIX = "demo:"


def resolve_local(spec: JobSpec, demo_dir: str | None = None) -> JobSpec:
    """``spec`` with ``demo:NAME`` references pointing into the demo directory (built on first use)."""
    refs = [spec.base_model, *spec.domain_data, *spec.general_data, spec.eval_data or ""]
    if not any(r.startswith(DEMO_PREFIX) for r in refs):
        return spec
    from .demo import build_demo

    root = build_demo(demo_dir, log=lambda m: print(m, file=sys.stderr)).root

    def resolve(ref: str) -> str:
        return str(root / ref.removeprefix(DEMO_PREFIX)) if ref.startswith(DEMO_PREFIX) else ref

    return spec.resolve_paths(resolve)


def run_local(spec: JobSpec, out: str | Path, log_every: int, resume: bool = False) -> TrainResult:
    """Train ``spec`` into ``out`` with the JSONL and console loggers: what ``mol train`` runs (and ``mol sweep``,
    once per grid point)."""
    from .callbacks import ConsoleLogger, JsonlLogger
    from .train import train

    return train(spec, out, [JsonlLogger(out), ConsoleLogger(every=log_every)], resume=resume)


def is_rank_zero() -> bool:
    """Whether this process speaks for the run: the only one, or rank 0 under torchrun."""
    return os.environ.get("RANK", "0") == "0"


def train_into(spec: JobSpec, out: str | Path, log_every: int, resume: bool = False) -> TrainResult:
    """:func:`run_local`, except that a run that fails before writing anything leaves no directory behind when this
    call made it."""
    out = Path(out)
    made_here = not out.exists()
    try:
        return run_local(spec, out, log_every, resume=resume)
    except BaseException:
        if made_here and is_rank_zero():
            remove_if_holds_nothing(out)
        raise


def remove_if_holds_nothing(directory: Path) -> None:
    """Deletes ``directory`` when no file under it holds a byte (a failed start's empty logs and folders)."""
    if directory.is_dir() and not any(f.is_file() and f.stat().st_size for f in directory.rglob("*")):
        shutil.rmtree(directory, ignore_errors=True)


def summary(out: Path, status: str, checkpoint: Path | None) -> str:
    """First and last value of each metric in ``out/metrics.jsonl``, and where the checkpoint is."""
    first: dict[str, tuple[int, float]] = {}
    last: dict[str, tuple[int, float]] = {}
    for line in RunDir(out).metrics_file.read_text().splitlines():
        point = json.loads(line)
        for name, value in point.items():
            if name != "step" and name != "train/tokens_per_s":
                first.setdefault(name, (point["step"], value))
                last[name] = (point["step"], value)
    lines = [f"run {status}: {out}", f"  {'metric':<22} {'first':>18} {'last':>18}"]
    for name in sorted(first):
        (s0, v0), (s1, v1) = first[name], last[name]
        lines.append(f"  {name:<22} {v0:>10.4g} @ {s0:<5} {v1:>10.4g} @ {s1:<5}")
    if checkpoint:
        lines.append(f"checkpoint: {checkpoint}")
        lines.append(f"export:     mol export {checkpoint} {out / 'export'}")
    return "\n".join(lines)


def run_dir_name(label: str) -> str:
    """A grid point's run directory: its label with only file-name-safe characters (``ratio=4-1_kl_weight=0.5``)."""
    return re.sub(r"[^A-Za-z0-9.=_-]", "-", label.replace(" ", "_"))


def run_sweep(base: Mapping[str, Any], grid: Mapping[str, list], out: str | Path, log_every: int,
              demo_dir: str | None = None, resume: bool = False) -> list[dict[str, Any]]:
    """Train every point of ``grid`` over ``base`` (all checked first: SweepError) into its run directory under
    ``out``, one after another; writes ``out/sweep.json`` (grid, jobs, frontier) and returns the jobs ranked, best
    domain gain first (:func:`mol_engine.sweep.ranked`)."""
    from .sweep import expand_grid, pareto_frontier, point_label, ranked, result_point

    points = expand_grid(base, grid)
    out = Path(out)
    jobs = []
    for name, spec in points:
        combination = {key: spec[key] for key in grid}
        run = out / run_dir_name(point_label(combination))
        print(f"sweep: {name} -> {run}", file=sys.stderr)
        result = run_local(resolve_local(JobSpec.model_validate(spec), demo_dir), run, log_every, resume=resume)
        evals = [json.loads(line) for line in RunDir(run).metrics_file.read_text().splitlines()]
        jobs.append({**result_point(run.name, evals), "name": name, "dir": str(run), "status": result.status,
                     "values": combination})
    rows = ranked(jobs)
    (out / "sweep.json").write_text(json.dumps({"grid": grid, "jobs": rows, "frontier": pareto_frontier(rows)},
                                               indent=2))
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The sweep's results as text, best domain gain first, ``*`` marking the Pareto frontier."""
    lines = [f"  {'':1} {'job':<40} {'status':<10} {'domain gain':>12} {'drift (KL)':>12}"]
    for row in rows:
        gain = "-" if row["gain"] is None else f"{row['gain']:.4g}"
        drift = "-" if row["drift"] is None else f"{row['drift']:.4g}"
        lines.append(f"  {'*' if row['on_frontier'] else ' '} {row['id']:<40} {row['status']:<10} {gain:>12} "
                     f"{drift:>12}")
    lines.append("  * on the Pareto frontier: no other job has a higher domain gain and a lower drift")
    return "\n".join(lines)
