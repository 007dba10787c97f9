"""``mol export CHECKPOINT OUT``: a checkpoint as a Hugging Face directory."""

from __future__ import annotations

import argparse

from ..subcommand import Subparsers


def run(args: argparse.Namespace) -> int:
    from mol_engine.budget import checkpoint_path
    from mol_engine.export import export_checkpoint

    print(export_checkpoint(checkpoint_path(args.checkpoint), args.out, merged=args.merged,
                            base_model=args.base_model))
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint as a Hugging Face directory (an FSDP checkpoint's "
                                             "shards gathered into one)")
    p.add_argument("checkpoint", help="DIR/checkpoints/step-N, or DIR/checkpoints/best (the best within the budget)")
    p.add_argument("out")
    p.add_argument("--merged", action="store_true", help="LoRA: merge the adapter into the base weights")
    p.add_argument("--base-model", default=None, help="LoRA: base model directory, if it moved")
    p.set_defaults(func=run)
