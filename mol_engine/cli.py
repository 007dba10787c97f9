"""``mol`` command line: train, export, demo, replicate.

    mol train SPEC.yaml --out DIR [--resume] [--set FIELD=VALUE ...]
    mol sweep SPEC.yaml --grid ratio=4:1,1:1 --grid kl_weight=0.5,1 --out DIR   (one job per grid point)
    mol export DIR/checkpoints/step-N OUT [--merged]     (or DIR/checkpoints/best: the best within the budget)
    mol interpolate RUN_OR_CHECKPOINT --alphas 0,0.25,0.5,0.75,1 [--export ALPHA --out DIR]   (WiSE-FT)
    mol demo [DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .run_dir import RunDir
from .spec import JobSpec, format_validation_error
from .spec_file import SpecFileError, load_yaml, read_spec_file

DEMO_PREFIX = "demo:"


class CliError(Exception):
    """A user error: printed as one message, exit status 2, no traceback."""


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lora.rank=8", "max_steps=20"]`` -> nested dict; values are parsed as YAML (numbers, lists, ...)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        field, sep, raw = pair.partition("=")
        if not sep or not field.strip():
            raise CliError(f"--set {pair!r}: expected FIELD=VALUE")
        target = out
        *parents, leaf = field.strip().split(".")
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = load_yaml(raw) if raw.strip() else ""
    return out


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged


def load_spec_dict(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """The mapping in a YAML spec file (read by the one spec reader, mol_engine.spec_file) with ``--set``
    overrides applied, not yet validated."""
    try:
        raw = read_spec_file(path)
    except SpecFileError as err:
        raise CliError(str(err)) from None
    return _merge(raw, parse_overrides(list(overrides)))


def load_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """The JobSpec in a YAML file with ``--set`` overrides applied; CliError naming the field when invalid."""
    raw = load_spec_dict(path, overrides)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise CliError(f"invalid job spec {path}:\n{format_validation_error(err)}") from None


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


def run_local(spec: JobSpec, out: str | Path, log_every: int, resume: bool = False):
    """Train ``spec`` into ``out`` with the JSONL and console loggers: what ``mol train`` runs (and ``mol sweep``,
    once per grid point)."""
    from .callbacks import ConsoleLogger, JsonlLogger
    from .train import train

    return train(spec, out, [JsonlLogger(out), ConsoleLogger(every=log_every)], resume=resume)


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    made_here = not out.exists()
    try:
        spec = resolve_local(load_spec(args.spec, args.set), args.demo_dir)
        result = run_local(spec, args.out, args.log_every, resume=args.resume)
    except BaseException:
        if made_here and os.environ.get("RANK", "0") == "0":
            remove_if_holds_nothing(out)  # a run that failed before writing anything leaves no directory behind
        raise
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(summary(Path(args.out), result.status, result.checkpoint))
    return 0 if result.status == "succeeded" else 1


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


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    """``["ratio=4:1,1:1", "kl_weight=0.5,1"]`` -> ``{"ratio": ["4:1", "1:1"], "kl_weight": [0.5, 1]}`` (values as
    YAML: numbers stay numbers, ratios stay strings)."""
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise CliError(f"--grid {pair!r}: expected FIELD=VALUE,VALUE,...")
        if key.strip() in grid:
            raise CliError(f"--grid {key.strip()}: given twice; list all its values in one --grid")
        grid[key.strip()] = [load_yaml(v) for v in raw.split(",")]
    return grid


def run_dir_name(label: str) -> str:
    """A grid point's run directory: its label with only file-name-safe characters (``ratio=4-1_kl_weight=0.5``)."""
    return re.sub(r"[^A-Za-z0-9.=_-]", "-", label.replace(" ", "_"))


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


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepError, expand_grid, pareto_frontier, point_label, ranked, result_point

    grid = parse_grid(args.grid)
    try:
        points = expand_grid(load_spec_dict(args.spec, args.set), grid)
    except SweepError as err:
        raise CliError(str(err)) from None
    out = Path(args.out)
    jobs = []
    for name, spec in points:
        combination = {key: spec[key] for key in grid}
        run = out / run_dir_name(point_label(combination))
        print(f"sweep: {name} -> {run}", file=sys.stderr)
        result = run_local(resolve_local(JobSpec.model_validate(spec), args.demo_dir), run, args.log_every,
                           resume=args.resume)
        evals = [json.loads(line) for line in RunDir(run).metrics_file.read_text().splitlines()]
        jobs.append({**result_point(run.name, evals), "name": name, "dir": str(run), "status": result.status,
                     "values": combination})
    rows = ranked(jobs)
    summary_file = out / "sweep.json"
    summary_file.write_text(json.dumps({"grid": grid, "jobs": rows,
                                        "frontier": pareto_frontier(rows)}, indent=2))
    print(sweep_table(rows))
    print(f"summary: {summary_file}")
    return 0 if all(r["status"] == "succeeded" for r in rows) else 1


def cmd_export(args: argparse.Namespace) -> int:
    from .budget import checkpoint_path
    from .export import export_checkpoint

    out = export_checkpoint(checkpoint_path(args.checkpoint), args.out, merged=args.merged, base_model=args.base_model)
    print(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import build_demo

    paths = build_demo(args.dir, log=lambda m: print(m, file=sys.stderr))
    for name in ("root", "model", "domain", "general", "eval"):
        print(f"{name:8} {getattr(paths, name)}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from .interpolate import (
        checkpoint_spec,
        evaluate_interpolation,
        export_interpolated,
        interpolation_table,
        resolve_checkpoint,
    )

    if (args.export is None) != (args.out is None):
        raise CliError("--export ALPHA and --out DIR go together")
    checkpoint = resolve_checkpoint(args.run_or_checkpoint)
    try:
        alphas = [float(a) for a in args.alphas.split(",")] if args.alphas else []
    except ValueError:
        raise CliError(f"--alphas {args.alphas!r}: expected numbers in [0, 1] separated by commas") from None
    if alphas:
        print(f"interpolating the base and {checkpoint}", file=sys.stderr)
        print(interpolation_table(evaluate_interpolation(checkpoint_spec(checkpoint), checkpoint, alphas)))
    if args.export is not None:
        print(export_interpolated(checkpoint, args.export, args.out))
    return 0


def cmd_eval_task(args: argparse.Namespace) -> int:
    from .task_eval import evaluate_task

    print(json.dumps(evaluate_task(args.model, args.task, limit=args.limit, device=args.device)))
    return 0


def cmd_replicate(args: argparse.Namespace) -> int:
    from .replicate import grids
    from .replicate import main as replicate
    from .sweep import SweepError, check_grid

    grid = parse_grid(args.grid)
    try:
        for each in grids(grid):  # a bad --grid is refused before the demo is built
            check_grid(each)
    except SweepError as err:
        raise CliError(str(err)) from None
    return replicate(args.out, args.docs, args.steps, grid)


def installed_version() -> str:
    """The installed mol-studio distribution's version (pyproject.toml's), or ``unknown`` from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mol-studio")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mol", description="Mixture-of-Losses domain adaptation of causal LMs")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a job spec (YAML)")
    p.add_argument("spec", help="job spec YAML; 'demo:NAME' references point into the demo directory")
    p.add_argument("--out", required=True, help="run directory: metrics.jsonl, events.jsonl, checkpoints/")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a spec field")
    p.add_argument("--demo-dir", default=None, help="demo directory (default: $MOL_HOME/demo)")
    p.add_argument("--log-every", type=int, default=10, help="print a progress line every N steps")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train a grid of variations of a job spec, one after another, and name the "
                                     "Pareto frontier of domain gain against general drift")
    p.add_argument("spec", help="the base job spec YAML")
    p.add_argument("--grid", action="append", required=True, metavar="FIELD=V1,V2,...",
                   help="values of ratio, kl_weight, lr or method to sweep (repeat for several fields)")
    p.add_argument("--out", required=True, help="one run directory per grid point under it, and sweep.json")
    p.add_argument("--resume", action="store_true", help="continue each run from its newest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a base spec field")
    p.add_argument("--demo-dir", default=None, help="demo directory (default: $MOL_HOME/demo)")
    p.add_argument("--log-every", type=int, default=10, help="print a progress line every N steps")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("export", help="export a checkpoint as a Hugging Face directory (an FSDP checkpoint's "
                                      "shards gathered into one)")
    p.add_argument("checkpoint", help="DIR/checkpoints/step-N, or DIR/checkpoints/best (the best within the budget)")
    p.add_argument("out")
    p.add_argument("--merged", action="store_true", help="LoRA: merge the adapter into the base weights")
    p.add_argument("--base-model", default=None, help="LoRA: base model directory, if it moved")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("interpolate", help="evaluate the models between the base and a checkpoint, "
                                           "(1-α)·base + α·checkpoint (LoRA: the adapter scaled by α), and export one")
    p.add_argument("run_or_checkpoint", help="DIR/checkpoints/step-N, DIR/checkpoints/best, or a run DIR (its best "
                                             "checkpoint, else its newest)")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="comma-separated α in [0, 1] ('' to only export)")
    p.add_argument("--export", type=float, default=None, metavar="ALPHA", help="write the model at this α to --out")
    p.add_argument("--out", default=None, help="the export's directory")
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("eval-task", help="score a model on a task file with lm-evaluation-harness (offline): "
                                         "multiple-choice (question, choices, answer) or exact-match JSONL")
    p.add_argument("model", help="a checkpoint (DIR/checkpoints/step-N, full or LoRA) or a base model directory")
    p.add_argument("task", help="the task file (JSONL)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when there is one)")
    p.set_defaults(func=cmd_eval_task)

    p = sub.add_parser("replicate", help="domain_only, CPT and MoL at 4 ratios on the demo, run as a sweep, with "
                                         "the Pareto frontier of domain gain against general drift -> docs/results.md")
    p.add_argument("--out", default="runs/replicate", help="where the runs go (reused when complete)")
    p.add_argument("--docs", default="docs", help="where results.md, results.json and the plots go")
    p.add_argument("--steps", type=int, default=None, help="override max_steps (default: the demo spec's)")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="vary MoL further (kl_weight, lr) or at other ratios; the baselines stay as they are")
    p.set_defaults(func=cmd_replicate)

    p = sub.add_parser("demo", help="build (or reuse) the offline demo model and corpora")
    p.add_argument("dir", nargs="?", default=None, help="default: $MOL_HOME/demo ($MOL_HOME defaults to ./.mol)")
    p.set_defaults(func=cmd_demo)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as ``error: ...`` and exit status 2. Imported once one is raised: the modules
    that define them import torch, which a command that loads no model (mol up, --version) never needs."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .export import ExportError
    from .interpolate import InterpolationError
    from .modeling import ModelError
    from .task_eval import TaskError
    from .train import TrainError

    return CliError, CheckpointError, DataError, ModelError, TrainError, ExportError, InterpolationError, TaskError


def _hide_progress_bars() -> None:
    """No progress bars from transformers or the hub, without importing transformers (a second at every start): it
    takes the hub's switch when it loads. Already loaded (a caller in the same process), its own switch is set."""
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].disable_progress_bar()
        return
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Entry point of the engine's CLI (``python -m mol_engine``); returns the exit status.

    ``parser`` lets a caller add commands (the service adds up, worker, token).
    """
    args = (parser or build_parser()).parse_args(argv)
    _hide_progress_bars()  # weight-loading bars would drown the training log
    try:
        return args.func(args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
