"""The names of ``eval_tasks`` entries, without pydantic: the spec, the engine, the API's checks and the client
(which imports nothing of the engine but its spec reader and run names) all name a task alike."""

from __future__ import annotations

import re

TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def task_entry(entry: str) -> tuple[str, str]:
    """(name, reference) of an ``eval_tasks`` entry: ``NAME=REF`` names it; a bare ``REF`` (a path, a dataset id)
    is named by its file name without the extension. Its scores are logged as ``task/<name>/acc`` (multiple
    choice) or ``task/<name>/exact_match``."""
    name, sep, ref = entry.partition("=")
    if sep and TASK_NAME.fullmatch(name):
        return name, ref
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", entry.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]) or "task"
    return (stem if stem[0].isalnum() else f"t{stem}")[:64], entry
