"""Disk used by a job's run directory: the one walk (os.scandir, no stat of what it does not count) lives in
store/usage.py, where the runners measure what counts against an owner's storage quota."""

from __future__ import annotations

from store.usage import tree_bytes

__all__ = ["tree_bytes"]
