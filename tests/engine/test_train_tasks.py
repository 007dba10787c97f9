"""Benchmarks during training (eval_tasks): task scores at each evaluation, the base's at step 0, and the task
budget (max_task_drop) acting with on_budget, one rule in mol_engine/budget.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mol_engine import train as train_module
from mol_engine.budget import best_checkpoint, first_crossing
from mol_engine.callbacks import Callback
from mol_engine.spec import JobSpec
from mol_engine.task_names import task_entry
from mol_engine.train import train

MC = [{"question": "What is 1 plus 2?", "choices": ["3", "river"], "answer": 0},
      {"question": "Which is green?", "choices": ["winter", "garden"], "answer": "garden"}]


class Events(Callback):
    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.events: list[dict] = []

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.setdefault(step, {}).update(metrics)

    def on_event(self, event: dict) -> None:
        self.events.append(event)


def task_file(path: Path, records: list[dict] = MC) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_run_scores_its_tasks_at_step_0_and_each_evaluation(make_spec, tmp_path):
    arith = task_file(tmp_path / "arith.jsonl")
    spec = make_spec(eval_data=None, sample_prompts=[], max_steps=2, eval_every=2, save_every=2,
                     eval_tasks=[str(arith)], best_metric="task/arith/acc")
    events = Events()
    train(spec, tmp_path / "run", [events])
    for step in (0, 2):
        assert 0 <= events.metrics[step]["task/arith/acc"] <= 1
    assert json.loads((tmp_path / "run" / "best.json").read_text())["metric"] == "task/arith/acc"


def test_a_task_drop_crosses_the_budget_and_stop_ends_the_run(make_spec, tmp_path, monkeypatch):
    scores = iter([0.75, 0.7, 0.5, 0.5, 0.5])  # steps 0..4: 5 points down, then 25 from step 2

    def scored(tasks, model, tokenizer):
        return dict.fromkeys(tasks, next(scores))

    monkeypatch.setattr(train_module, "task_scores", scored)
    spec = make_spec(eval_data=None, sample_prompts=[], max_steps=4, eval_every=1, save_every=4,
                     eval_tasks=[f"mine={task_file(tmp_path / 'a.jsonl')}"], max_task_drop=10, budget_patience=2,
                     on_budget="stop")
    events = Events()
    result = train(spec, tmp_path / "run", [events])
    assert (result.status, result.reason, result.step) == ("succeeded", "budget", 3)  # steps 2 and 3 over it
    (budget,) = [e for e in events.events if e["kind"] == "budget"]
    assert budget["task_drops"] == {"task/mine/acc": pytest.approx(25.0)} and "max_task_drop = 10" in budget["message"]


def test_the_task_rule_needs_patience_and_excludes_dropped_checkpoints_from_best():
    history = {0: {"task/a/acc": 0.8, "eval/domain_ppl": 9.0}, 2: {"task/a/acc": 0.6, "eval/domain_ppl": 5.0},
               4: {"task/a/acc": 0.75, "eval/domain_ppl": 6.0}, 6: {"task/a/acc": 0.5, "eval/domain_ppl": 4.0}}
    assert first_crossing(history, None, 1, max_task_drop=10) == 2
    assert first_crossing(history, None, 2, max_task_drop=10) is None  # step 4 is within: no two in a row
    kept = {s: history[s] for s in (2, 4, 6)}
    assert best_checkpoint(kept, None, "domain_ppl", history[0], max_task_drop=10) == 4
    assert best_checkpoint(kept, None, "task/a/acc") == 4 and best_checkpoint(kept, None) == 6


def test_task_names_and_best_metric_validation(make_spec):
    assert task_entry("/data/arith.v2.jsonl") == ("arith", "/data/arith.v2.jsonl")
    assert task_entry("math=ds_0123") == ("math", "ds_0123")
    spec = make_spec(eval_tasks=["math=/x/a.jsonl"])
    assert spec.resolve_paths(lambda ref: "/stored/" + ref.rsplit("/", 1)[-1]).eval_tasks == ["math=/stored/a.jsonl"]
    with pytest.raises(ValidationError, match="names a task not in eval_tasks"):
        make_spec(eval_tasks=["/x/a.jsonl"], best_metric="task/b/acc")
    with pytest.raises(ValidationError, match="two tasks are named a"):
        make_spec(eval_tasks=["/x/a.jsonl", "/y/a.jsonl"])
    with pytest.raises(ValidationError, match="max_task_drop needs eval_tasks"):
        make_spec(max_task_drop=5)
    with pytest.raises(ValidationError, match="best_metric"):
        make_spec(best_metric="task/a/f1", eval_tasks=["/x/a.jsonl"])
    assert JobSpec.model_json_schema()["properties"]["best_metric"]  # the dashboard's form still reads it
