"""The ``mol`` console script: its parser, built from the command modules in :data:`COMMANDS`, and how a command's
errors reach the terminal (one line and exit status 2 for a user's mistake, never a traceback).

    mol train SPEC.yaml --out DIR [--resume] [--set FIELD=VALUE ...]
    mol sweep SPEC.yaml --grid ratio=4:1,1:1 --grid kl_weight=0.5,1 --out DIR   (one run per grid point)
    mol export DIR/checkpoints/step-N OUT [--merged]     (or DIR/checkpoints/best: the best within the budget)
    mol interpolate RUN_OR_CHECKPOINT --alphas 0,0.25,0.5,0.75,1 [--export ALPHA --out DIR]   (WiSE-FT)
    mol eval-task MODEL TASK.jsonl | mol replicate | mol demo [DIR]
    mol up | mol api | mol worker [--gpus 0,1 | --procs N] | mol token create|list|revoke
    mol client COMMAND ...   (the REST API from a terminal)

Every command module imports its library (torch, the service) only when it runs: building the parser is cheap, so
``mol --version`` and ``mol client`` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import (
    api_server,
    client,
    demo,
    eval_task,
    export,
    interpolate,
    replicate,
    sweep,
    tokens,
    train,
    up,
    worker_process,
)
from .subcommand import Subcommand, UsageError

COMMANDS: tuple[Subcommand, ...] = (train, sweep, export, interpolate, eval_task, replicate, demo,
                                    up, api_server, worker_process, tokens, client)


def installed_version() -> str:
    """The installed mol-studio distribution's version (pyproject.toml's), or ``unknown`` from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mol-studio")
    except PackageNotFoundError:
        return "unknown"


def build_parser(commands: Sequence[Subcommand] = COMMANDS) -> argparse.ArgumentParser:
    """``mol``'s parser with each of ``commands`` registered as a subcommand."""
    parser = argparse.ArgumentParser(prog="mol", description="Mixture-of-Losses domain adaptation of causal LMs")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        command.register(subparsers)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as ``error: ...`` and exit status 2. Imported once one is raised: the modules
    that define them import torch, which a command that loads no model (mol up, --version) never needs."""
    from mol_engine.checkpoint import CheckpointError
    from mol_engine.data import DataError
    from mol_engine.export import ExportError
    from mol_engine.interpolate import InterpolationError
    from mol_engine.modeling import ModelError
    from mol_engine.spec_file import SpecFileError
    from mol_engine.sweep import SweepError
    from mol_engine.task_eval import TaskError
    from mol_engine.train import TrainError

    return (UsageError, SpecFileError, SweepError, CheckpointError, DataError, ModelError, TrainError, ExportError,
            InterpolationError, TaskError)


def _hide_progress_bars() -> None:
    """No progress bars from transformers or the hub, without importing transformers (a second at every start): it
    takes the hub's switch when it loads. Already loaded (a caller in the same process), its own switch is set."""
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].disable_progress_bar()
        return
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


def _settings_problems(err: Exception) -> str | None:
    """The invalid MOL_* settings ``err`` names, in one line; None when it is not the service settings' error."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError) or err.title != "Settings":
        return None
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())


def run(args: argparse.Namespace) -> int:
    """Runs the parsed command; its exit status."""
    if args.command != "client":  # weight-loading bars would drown the training log
        _hide_progress_bars()
    try:
        return args.func(args)
    except Exception as err:
        problems = _settings_problems(err)
        if problems is not None:
            print(f"error: invalid MOL_* settings: {problems}", file=sys.stderr)
            return 2
        if not isinstance(err, _user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mol`` console script (and ``python -m mol_cli``); returns the exit status. ``mol client``
    registers the client alone: nothing of the engine or the service is imported."""
    argv = sys.argv[1:] if argv is None else argv
    commands = (client,) if argv[:1] == ["client"] else COMMANDS
    return run(build_parser(commands).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
