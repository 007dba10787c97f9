"""``mol interpolate RUN_OR_CHECKPOINT``: the models between the base and a checkpoint (WiSE-FT), evaluated, and
one of them exported."""

from __future__ import annotations

import argparse

from ..subcommand import Subparsers, UsageError


def alphas_of(text: str) -> list[float]:
    """``--alphas 0,0.5,1`` as numbers (none for ``''``); UsageError when one is not a number."""
    try:
        return [float(a) for a in text.split(",")] if text else []
    except ValueError:
        raise UsageError(f"--alphas {text!r}: expected numbers in [0, 1] separated by commas") from None


def run(args: argparse.Namespace) -> int:
    import sys

    from mol_engine.interpolate import (
        checkpoint_spec,
        evaluate_interpolation,
        export_interpolated,
        interpolation_table,
        resolve_checkpoint,
    )

    if (args.export is None) != (args.out is None):
        raise UsageError("--export ALPHA and --out DIR go together")
    checkpoint = resolve_checkpoint(args.run_or_checkpoint)
    alphas = alphas_of(args.alphas)
    if alphas:
        print(f"interpolating the base and {checkpoint}", file=sys.stderr)
        print(interpolation_table(evaluate_interpolation(checkpoint_spec(checkpoint), checkpoint, alphas)))
    if args.export is not None:
        print(export_interpolated(checkpoint, args.export, args.out))
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("interpolate", help="evaluate the models between the base and a checkpoint, "
                              "(1-α)·base + α·checkpoint (LoRA: the adapter scaled by α), and export one")
    p.add_argument("run_or_checkpoint", help="DIR/checkpoints/step-N, DIR/checkpoints/best, or a run DIR (its best "
                                             "checkpoint, else its newest)")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="comma-separated α in [0, 1] ('' to only export)")
    p.add_argument("--export", type=float, default=None, metavar="ALPHA", help="write the model at this α to --out")
    p.add_argument("--out", default=None, help="the export's directory")
    p.set_defaults(func=run)
