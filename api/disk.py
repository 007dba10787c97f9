"""Disk used by a job's run directory, walked with os.scandir (no stat of what it does not count)."""

from __future__ import annotations

import os
from pathlib import Path


def tree_bytes(path: str | Path) -> int:
    """Total size in bytes of the regular files under ``path`` (0 when it does not exist); links are not followed.

    Files and directories that vanish during the walk (a checkpoint being pruned) are skipped.
    """
    total, pending = 0, [os.fspath(path)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total
