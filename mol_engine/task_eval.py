"""Task evaluation with lm-evaluation-harness: a user's task file, scored on a checkpoint or the base, offline.

A task file is JSONL, one question a line, of one of two kinds:

- ``multiple_choice``: ``{"question", "choices": [...], "answer"}``, the answer a 0-based index into the choices or
  the text of one. lm-eval scores each choice by its summed log-likelihood ``log p(" " + choice | context)`` with
  ``context = "Question: {question}\\nAnswer:"``; ``acc`` is the argmax's accuracy, ``acc_norm`` that of the
  log-likelihood divided by the choice's length in characters.
- ``exact_match``: ``{"question", "answer"}``; the greedy generation from the same context, up to a newline and
  stripped of surrounding whitespace, must equal the answer.

The file is checked here (each bad line named), normalised into a local copy, and described by an lm-eval YAML
task that loads it with the ``json`` dataset builder: nothing is read from a hub. lm-eval is imported inside the
functions that run it (it takes seconds), never when this module is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import BadLines, DataError, _bad, _file_lines
from .run_dir import STATE_FILE, is_sharded_checkpoint
from .threads import use_threads

KINDS = ("multiple_choice", "exact_match")
CONTEXT = "Question: {{question}}\nAnswer:"
MAX_GEN_TOKS = 32  # an exact-match answer is short: a number, a word, a name


class TaskError(ValueError):
    """A task evaluation cannot run as asked (the model cannot be loaded, the file is not a task)."""


@dataclass(frozen=True)
class TaskFile:
    """A checked task file: its kind and its records, normalised (a multiple-choice answer as the choice's index)."""

    path: Path
    kind: str
    records: list[dict[str, Any]] = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.records)


def check_task_file(path: str | Path, bad: BadLines | None = None) -> TaskFile:
    """The task file at ``path``, checked; else DataError (a ValueError) naming the 1-based line and what is wrong:
    invalid JSON, a missing field, an answer outside the choices, or a kind other than the first line's. With
    ``bad``, bad lines are noted there and skipped (the caller reports them all)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind, records = None, []
    for line_no, line in _file_lines(path, bad):
        if line is None or not line.strip():
            continue
        try:
            record_kind, record = _record(line)
            if kind is not None and record_kind != kind:
                raise ValueError(f"a {record_kind.replace('_', '-')} question, but the first is "
                                 f"{kind.replace('_', '-')} (every line needs 'choices', or none does)")
        except ValueError as err:
            _bad(bad, DataError(f"{path}, line {line_no}: {err}"))
            continue
        kind = record_kind
        records.append(record)
    if kind is None and not (bad and bad.count):
        raise DataError(f"{path}: no questions found (empty file)")
    return TaskFile(path, kind or KINDS[0], records)


def record_text(record: dict[str, Any]) -> str:
    """A normalised record as a dataset preview shows it: the question, then the choices (``*`` the answer's) or
    the answer."""
    if "choices" not in record:
        return f"{record['question']}\n\n{record['answer']}"
    marked = [("* " if i == record["answer"] else "- ") + c for i, c in enumerate(record["choices"])]
    return record["question"] + "\n\n" + "\n".join(marked)


def _record(line: str) -> tuple[str, dict[str, Any]]:
    """(kind, normalised record) of one line; ValueError saying what is wrong with it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    for name in ("question", "answer"):
        if name not in record:
            raise ValueError(f"missing field '{name}'")
    question, answer = record["question"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("field 'question' must be a non-empty string")
    if "choices" not in record:
        if isinstance(answer, bool) or not isinstance(answer, str | int | float) or not str(answer).strip():
            raise ValueError("field 'answer' must be a non-empty string (or a number)")
        return "exact_match", {"question": question, "answer": str(answer).strip()}
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("field 'choices' must be a list of at least 2 non-empty strings")
    return "multiple_choice", {"question": question, "choices": choices, "answer": _choice_index(answer, choices)}


def _choice_index(answer: Any, choices: list[str]) -> int:
    """The 0-based index the answer names (an index, or a choice's text); ValueError when it names none."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(choices):
            return answer
        raise ValueError(f"answer {answer} is outside the choices (a 0-based index below {len(choices)}); "
                         f"fix: give the right choice's 0-based index (0 to {len(choices) - 1}) or its exact text")
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer)
    raise ValueError(f"answer {json.dumps(answer)} is not one of the choices {json.dumps(choices)}; fix: give the "
                     f"right choice's exact text (case and spaces count) or its 0-based index, or add it to choices")


def write_task_config(task_file: TaskFile, folder: str | Path) -> str:
    """Write the normalised records and an lm-eval YAML task reading them to ``folder``; return the task's name."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r) + "\n" for r in task_file.records)
    name = f"mol_task_{hashlib.sha256(body.encode()).hexdigest()[:12]}"
    data = folder / f"{name}.jsonl"
    data.write_text(body)
    config: dict[str, Any] = {
        "task": name, "dataset_path": "json", "test_split": "test", "doc_to_text": CONTEXT,
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}, "cache_dir": str((folder / "hf").resolve())},
    }
    if task_file.kind == "multiple_choice":
        config |= {"output_type": "multiple_choice", "doc_to_choice": "{{choices}}", "doc_to_target": "answer",
                   "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                   for m in ("acc", "acc_norm")]}
    else:
        config |= {"output_type": "generate_until", "doc_to_target": "{{answer}}",
                   "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": MAX_GEN_TOKS},
                   "filter_list": [{"name": "strip", "filter": [{"function": "remove_whitespace"},
                                                                {"function": "take_first"}]}],
                   "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def load_model(path: str | Path, device: str | None = None):
    """(model, tokenizer) of a base model directory or a training checkpoint (full weights, a LoRA adapter merged
    into its base, or FSDP shards gathered), in eval mode on ``device`` (default: CUDA when there is one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .export import ExportError, is_adapter, model_dir

    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        source = model_dir(path)
        if not (path / STATE_FILE).is_file() or not (is_adapter(path) or is_sharded_checkpoint(path)):
            model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", local_files_only=True)
        else:
            model = _from_base(path, source)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError, ExportError) as err:
        raise TaskError(f"{path}: the model cannot be loaded ({type(err).__name__}: {err})") from None
    return model.to(device).eval(), tokenizer


def _from_base(checkpoint: Path, source: Path):
    """A checkpoint whose weights need its base: a LoRA adapter merged into it, or FSDP shards loaded into it."""
    from transformers import AutoModelForCausalLM

    from .export import is_adapter
    from .interpolate import _merged_at, checkpoint_weights, full_checkpoint_state, trainer_state

    base = trainer_state(checkpoint).get("base_model")
    if not base or not (Path(base) / "config.json").is_file():
        raise TaskError(f"{checkpoint}: base model '{base}' not found locally")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", local_files_only=True)
    weights = checkpoint_weights(checkpoint)
    if is_adapter(checkpoint):
        return _merged_at(model, source, weights, 1.0)
    model.load_state_dict(full_checkpoint_state(model, weights))
    return model


def evaluate_task(model_dir: str | Path | None, task_file: TaskFile | str | Path, *, limit: int | None = None,
                  device: str | None = None, model: Any = None, tokenizer: Any = None,
                  details: bool = False) -> dict[str, Any]:
    """The task's metrics on the model: ``{"acc", "acc_norm", "n"}`` (multiple choice) or ``{"exact_match", "n"}``,
    over the first ``limit`` questions (all by default). ``model``/``tokenizer`` may be given already loaded. With
    ``details``, ``"answers"`` too: per question, each choice's log-likelihood, or the stripped generation."""
    task_file = task_file if isinstance(task_file, TaskFile) else check_task_file(task_file)
    use_threads()  # torch's threads by the machine's idle cores (mol_engine/threads.py), once per process
    if model is None:
        model, tokenizer = load_model(model_dir, device)
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # the json builder reads the local file; nothing from a hub
    with tempfile.TemporaryDirectory(prefix="mol-task-") as folder:
        name = write_task_config(task_file, folder)
        results = _run_lm_eval(model, tokenizer, folder, name, limit, details)
    metrics = results["results"][name]
    names = ("acc", "acc_norm") if task_file.kind == "multiple_choice" else ("exact_match",)
    out: dict[str, Any] = {metric: float(metrics[f"{metric},none" if task_file.kind == "multiple_choice"
                                                 else f"{metric},strip"]) for metric in names}
    out["n"] = int(results["n-samples"][name]["effective"])
    if details:
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        out["answers"] = [[float(ll) for ll, _ in s["filtered_resps"]] if task_file.kind == "multiple_choice"
                          else s["filtered_resps"][0] for s in samples]
    return out


def _run_lm_eval(model: Any, tokenizer: Any, folder: str, name: str, limit: int | None, samples: bool) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8)
    manager = TaskManager(include_path=folder, include_defaults=False)  # only our task: no scan of lm-eval's own
    return simple_evaluate(model=lm, tasks=[name], task_manager=manager, num_fewshot=0, limit=limit,
                           log_samples=samples, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                           torch_random_seed=0, fewshot_random_seed=0)


def metric_name(task_name: str, task_file: TaskFile) -> str:
    """The metric a task's score is logged as during training: ``task/<name>/acc`` (multiple choice) or
    ``task/<name>/exact_match``."""
    return f"task/{task_name}/{'acc' if task_file.kind == 'multiple_choice' else 'exact_match'}"


def load_tasks(entries: list[tuple[str, str]], best_metric: str = "") -> dict[str, TaskFile]:
    """A job's ``eval_tasks`` as (name, path) pairs, each file checked: metric name -> task file. TaskError when
    ``best_metric`` names a task's score its kind does not give (``acc`` of an exact-match task)."""
    tasks = {}
    for name, path in entries:
        task_file = check_task_file(path)
        tasks[metric_name(name, task_file)] = task_file
    if best_metric.startswith("task/") and best_metric not in tasks:
        given = [m for m in tasks if m.split("/")[1] == best_metric.split("/")[1]]
        raise TaskError(f"best_metric '{best_metric}': that task is scored as {', '.join(given)} (its file's kind)")
    return tasks


def task_scores(tasks: dict[str, TaskFile], model: Any, tokenizer: Any) -> dict[str, float]:
    """Each task's score on a model already loaded (and in eval mode), by :func:`evaluate_task`: metric name ->
    accuracy or exact match, in [0, 1]."""
    scores = {}
    for metric, task_file in tasks.items():
        scores[metric] = evaluate_task(None, task_file, model=model, tokenizer=tokenizer)[metric.rsplit("/", 1)[1]]
    return scores
