"""``mol replicate``: the paper's comparison at demo scale (domain_only, CPT, MoL at 4 ratios) and its report."""

from __future__ import annotations

import argparse

from ..subcommand import Subparsers


def run(args: argparse.Namespace) -> int:
    from mol_engine.replicate import main as replicate
    from mol_engine.spec_file import parse_grid

    return replicate(args.out, args.docs, args.steps, parse_grid(args.grid))


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("replicate", help="domain_only, CPT and MoL at 4 ratios on the demo, run as a sweep, "
                              "with the Pareto frontier of domain gain against general drift -> docs/results.md")
    p.add_argument("--out", default="runs/replicate", help="where the runs go (reused when complete)")
    p.add_argument("--docs", default="docs", help="where results.md, results.json and the plots go")
    p.add_argument("--steps", type=int, default=None, help="override max_steps (default: the demo spec's)")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="vary MoL further (kl_weight, lr) or at other ratios; the baselines stay as they are")
    p.set_defaults(func=run)
