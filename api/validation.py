"""Checks that turn client input into trusted records: dataset contents, job references, model ids."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mol_engine import data
from mol_engine.context import model_context, seq_len_problem
from mol_engine.data import DataError, DocumentReader, iter_qa
from mol_engine.spec import JobSpec
from store.db import WorkerSeen, utcnow
from store.models import demo_status
from store.settings import Settings

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


def dataset_refs(spec: dict[str, Any]) -> set[str]:
    """Every dataset id a stored job spec refers to."""
    refs = set(spec.get("domain_data", [])) | set(spec.get("general_data", []))
    refs |= {spec["sample_prompts"]} if isinstance(spec.get("sample_prompts"), str) else set()
    return refs | ({spec["eval_data"]} if spec.get("eval_data") else set())


def demo_problem(spec: JobSpec, settings: Settings) -> list[str]:
    """A job on ``demo`` while the demo is not ready yet: why, with its progress and ETA."""
    if spec.base_model != "demo" or not settings.demo_model:
        return []
    status = demo_status(settings)
    if status.state == "ready":
        return []
    return [f"base_model: 'demo' is not ready yet. {status.message} Submit again once GET /v1/demo says ready."]


def check_references(spec: JobSpec, owned: dict[str, Any], models: dict[str, Path]) -> list[str]:
    """Problems with a spec's model and dataset ids (``owned``: id -> Dataset of this owner), each naming the field."""
    problems = []
    if spec.base_model not in models:
        problems.append(f"base_model: unknown model '{spec.base_model}' (see GET /v1/models)")
    fields = [("domain_data", spec.domain_data, "domain"), ("general_data", spec.general_data, "general")]
    fields.append(("eval_data", [spec.eval_data] if spec.eval_data else [], "eval"))
    fields.append(("sample_prompts", [spec.sample_prompts] if isinstance(spec.sample_prompts, str) else [], "prompts"))
    for field, ids, purpose in fields:
        for i, dataset_id in enumerate(ids):
            where = f"{field}[{i}]" if field.endswith("_data") and field != "eval_data" else field
            dataset = owned.get(dataset_id)
            if dataset is None:
                problems.append(f"{where}: unknown dataset '{dataset_id}'")
            elif dataset.purpose != purpose:
                problems.append(
                    f"{where}: dataset '{dataset_id}' was uploaded for '{dataset.purpose}', not '{purpose}'")
    return problems


def shape_problems(spec: JobSpec, models: dict[str, Path], max_tokens: int) -> list[str]:
    """Problems with the blocks a spec trains on, each naming the fields: ``seq_len`` beyond its base model's
    context (the engine's rule, as ``mol train`` checks it), a micro-batch of more than ``max_tokens`` tokens."""
    problems = []
    if spec.base_model in models:
        problem = seq_len_problem(spec.seq_len, model_context(models[spec.base_model]), spec.base_model)
        problems += [problem] if problem else []
    tokens = spec.batch_size * spec.seq_len
    if tokens > max_tokens:
        problems.append(f"batch_size, seq_len: a micro-batch of {spec.batch_size} x {spec.seq_len} = {tokens} tokens "
                        f"is more than the {max_tokens} a worker accepts (MOL_MAX_MICROBATCH_TOKENS); lower "
                        "batch_size and raise grad_accum, or lower seq_len")
    return problems


def largest_nproc(db: Session, settings: Settings) -> int:
    """The most processes a job may ask for now: the capacity of the largest worker alive (seen within
    ``lease_timeout_s``, the bound after which its leases count as dead), or ``MOL_MAX_NPROC`` when larger
    (deployments whose large workers start on demand, after the jobs are submitted)."""
    since = utcnow() - timedelta(seconds=settings.lease_timeout_s)
    alive = db.scalar(select(func.max(WorkerSeen.capacity)).where(WorkerSeen.last_seen >= since))
    return max(alive or 1, settings.max_nproc)


def nproc_problem(nproc: int, largest: int) -> list[str]:
    """The problem with asking for ``nproc`` processes when the largest worker gives ``largest`` (none or one)."""
    if nproc <= largest:
        return []
    return [f"nproc: {nproc} processes asked, but the largest worker runs {largest}; ask for at most {largest}, or "
            f"start a worker with at least {nproc} GPUs (`mol worker --gpus ...`), or set MOL_MAX_NPROC"]
