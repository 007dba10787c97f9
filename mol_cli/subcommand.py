"""What a command module of the ``mol`` CLI is: a ``register(subparsers)`` that adds its parser to ``mol``'s
subcommands and sets ``func`` (``args -> exit status``) on it, as torchtune's ``tune`` subcommands do."""

from __future__ import annotations

import argparse
from typing import Any, Protocol


class Subparsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as a command uses it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


class Subcommand(Protocol):
    """A command module: mol_cli/commands/train.py and the others."""

    def register(self, subparsers: Subparsers) -> None: ...


class UsageError(Exception):
    """Arguments that do not go together: printed as one message, exit status 2, no traceback."""
