"""``mol demo [DIR]``: build (or reuse) the offline demo model and corpora, and print where they are."""

from __future__ import annotations

import argparse
import sys

from ..subcommand import Subparsers


def run(args: argparse.Namespace) -> int:
    from mol_engine.demo import build_demo

    paths = build_demo(args.dir, log=lambda m: print(m, file=sys.stderr))
    for name in ("root", "model", "domain", "general", "eval"):
        print(f"{name:8} {getattr(paths, name)}")
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("demo", help="build (or reuse) the offline demo model and corpora")
    p.add_argument("dir", nargs="?", default=None, help="default: $MOL_HOME/demo ($MOL_HOME defaults to ./.mol)")
    p.set_defaults(func=run)
