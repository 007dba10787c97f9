"""``mol eval-task MODEL TASK.jsonl``: a model's score on a task file with lm-evaluation-harness, offline."""

from __future__ import annotations

import argparse
import json

from ..subcommand import Subparsers


def run(args: argparse.Namespace) -> int:
    from mol_engine.task_eval import evaluate_task

    print(json.dumps(evaluate_task(args.model, args.task, limit=args.limit, device=args.device)))
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("eval-task", help="score a model on a task file with lm-evaluation-harness (offline): "
                                                "multiple-choice (question, choices, answer) or exact-match JSONL")
    p.add_argument("model", help="a checkpoint (DIR/checkpoints/step-N, full or LoRA) or a base model directory")
    p.add_argument("task", help="the task file (JSONL)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA when there is one)")
    p.set_defaults(func=run)
