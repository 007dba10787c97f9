"""``mol train SPEC.yaml --out DIR``: train a job spec on this machine (under torchrun: ``-m mol_cli train``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..subcommand import Subparsers


def run(args: argparse.Namespace) -> int:
    from mol_engine.local_runs import is_rank_zero, resolve_local, summary, train_into
    from mol_engine.spec_file import load_spec

    result = train_into(resolve_local(load_spec(args.spec, args.set), args.demo_dir), args.out, args.log_every,
                        resume=args.resume)
    if is_rank_zero():  # under torchrun, rank 0 speaks for all
        print(summary(Path(args.out), result.status, result.checkpoint))
    return 0 if result.status == "succeeded" else 1


def add_run_options(parser: argparse.ArgumentParser, resume_help: str, set_help: str) -> None:
    """The options of a command that trains on this machine (train, sweep): --resume, --set, --demo-dir and
    --log-every."""
    parser.add_argument("--resume", action="store_true", help=resume_help)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=set_help)
    parser.add_argument("--demo-dir", default=None, help="demo directory (default: $MOL_HOME/demo)")
    parser.add_argument("--log-every", type=int, default=10, help="print a progress line every N steps")


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("train", help="train a job spec (YAML)")
    p.add_argument("spec", help="job spec YAML; 'demo:NAME' references point into the demo directory")
    p.add_argument("--out", required=True, help="run directory: metrics.jsonl, events.jsonl, checkpoints/")
    add_run_options(p, "continue from the newest checkpoint in --out", "override a spec field")
    p.set_defaults(func=run)
