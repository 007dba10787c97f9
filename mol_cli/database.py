"""The service commands' database: opened from the MOL_* settings, and its being unreachable at start told in one
line (``mol up: cannot reach the database at …``, exit status 1) instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

Command = Callable[[argparse.Namespace], int]


def open_sessions():
    """The session factory of the database the MOL_* settings name (created and migrated on first use)."""
    from store.db import open_database
    from store.settings import Settings

    return open_database(Settings().db_url)


def unreachable_in_one_line(name: str, command: Command) -> Command:
    """``command``, which prints ``mol <name>: cannot reach the database at …`` and returns 1 when the database
    does not answer at start, instead of raising (a traceback)."""

    def run(args: argparse.Namespace) -> int:
        from store.db import DatabaseUnreachable

        try:
            return command(args)
        except DatabaseUnreachable as err:
            print(f"mol {name}: {err}", file=sys.stderr)
            return 1

    return run
