"""``mol sweep SPEC.yaml --grid FIELD=V1,V2 --out DIR``: a grid of variations of a spec, trained one after
another, and the Pareto frontier of domain gain against general drift."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..subcommand import Subparsers
from .train import add_run_options


def run(args: argparse.Namespace) -> int:
    from mol_engine.local_runs import run_sweep, sweep_table
    from mol_engine.spec_file import load_spec_dict, parse_grid

    rows = run_sweep(load_spec_dict(args.spec, args.set), parse_grid(args.grid), args.out, args.log_every,
                     demo_dir=args.demo_dir, resume=args.resume)
    print(sweep_table(rows))
    print(f"summary: {Path(args.out) / 'sweep.json'}")
    return 0 if all(r["status"] == "succeeded" for r in rows) else 1


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("sweep", help="train a grid of variations of a job spec, one after another, and name "
                                            "the Pareto frontier of domain gain against general drift")
    p.add_argument("spec", help="the base job spec YAML")
    p.add_argument("--grid", action="append", required=True, metavar="FIELD=V1,V2,...",
                   help="values of ratio, kl_weight, lr or method to sweep (repeat for several fields)")
    p.add_argument("--out", required=True, help="one run directory per grid point under it, and sweep.json")
    add_run_options(p, "continue each run from its newest checkpoint", "override a base spec field")
    p.set_defaults(func=run)
