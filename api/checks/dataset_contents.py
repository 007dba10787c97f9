"""A stored upload read with the engine's readers: its documents and tokens counted, or every bad line named."""

from __future__ import annotations

import json
from pathlib import Path

from mol_engine import data
from mol_engine.data import DataError, DocumentReader, iter_qa

from .names import name_problem


def inspect_dataset(path: Path, purpose: str, filename: str, *, max_bad_lines: int) -> tuple[int, int]:
    """(documents, approximate tokens) of a stored upload; else DataError naming the field, or every bad line of
    the client's file (the first ``max_bad_lines``, then how many more), each with its number and what is wrong."""
    problem = name_problem(purpose, filename)
    if problem:
        raise DataError(problem)
    bad = data.BadLines(max_bad_lines)  # the whole file is read: a client fixes every line at once
    try:
        counted = _count(path, purpose, bad)
    except DataError as err:  # about the whole file (unreadable, too many prompts), after the lines before it
        raise DataError(str(bad.error(err)).replace(str(path), filename)) from None
    if bad.count:
        raise DataError(str(bad.error()).replace(str(path), filename))
    return counted


def _count(path: Path, purpose: str, bad: data.BadLines) -> tuple[int, int]:
    """(records, approximate tokens) of a file read as ``purpose`` with the engine's readers, bad lines to ``bad``."""
    if purpose == "eval":  # streamed too: memory stays bounded by one pair
        pairs = chars = 0
        for pair in iter_qa(path, bad):
            pairs, chars = pairs + 1, chars + len(pair.question) + len(pair.answer)
        return pairs, chars // 4
    if purpose == "prompts":  # at most MAX_SAMPLE_PROMPTS rows of bounded length
        from mol_engine.samples import read_prompts

        prompts = read_prompts(path, bad)
        return len(prompts), sum(map(len, prompts)) // 4
    if purpose == "task":  # a task file for task evaluation (mol_engine/task_eval.py)
        from mol_engine.task_eval import check_task_file

        records = check_task_file(path, bad).records
        return len(records), sum(len(json.dumps(r)) for r in records) // 4
    documents = chars = 0
    for doc in DocumentReader(path, bad):  # streamed: memory stays bounded whatever the file size
        documents, chars = documents + 1, chars + len(doc)
    return documents, chars // 4
