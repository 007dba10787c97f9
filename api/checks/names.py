"""An upload's purpose and file name, and a form's short text: checked before any byte or row is stored."""

from __future__ import annotations

import re
from pathlib import Path

from mol_engine import data

PURPOSES = ("domain", "general", "eval", "prompts", "task")  # prompts: sample_prompts; task: lm-eval tasks
CORPUS_SUFFIXES = tuple(data.CORPUS_SUFFIXES)  # what the engine reads, in one place
QA_SUFFIXES = (".jsonl", ".ndjson", ".json")
MAX_FILENAME = 255  # characters: the database column's width, and most file systems' limit
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def filename_problem(filename: str, field: str = "file") -> str | None:
    """What makes a client's file name unusable (too long, or a control character such as NUL), or None."""
    if len(filename) > MAX_FILENAME:
        return f"{field}: the file name has {len(filename)} characters; at most {MAX_FILENAME} are allowed"
    if CONTROL.search(filename):
        return f"{field}: the file name must not contain control characters (such as NUL or a newline)"
    return None


def text_problem(field: str, value: str) -> str | None:
    """What makes a client's short text (a form field) unusable: a control character such as NUL, which
    PostgreSQL refuses to store; else None."""
    if CONTROL.search(value):
        return f"{field}: must not contain control characters (such as NUL or a newline)"
    return None


def name_problem(purpose: str, filename: str, field: str = "file") -> str | None:
    """What is wrong with an upload's purpose or file name (``field`` names the name's field), before any byte."""
    if purpose not in PURPOSES:
        return text_problem("purpose", purpose) or f"purpose: must be one of {', '.join(PURPOSES)} (got '{purpose}')"
    problem = filename_problem(filename, field)
    if problem:
        return problem
    allowed = QA_SUFFIXES if purpose in ("eval", "prompts", "task") else CORPUS_SUFFIXES
    if Path(filename).suffix.lower() not in allowed:
        return f"{field}: '{filename}' must end with one of {', '.join(allowed)} for purpose '{purpose}'"
    return None
