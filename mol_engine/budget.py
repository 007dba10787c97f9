"""The forgetting budget and the best checkpoint within it: one place for each rule.

A job may set ``max_general_kl``, the KL to the base (nats/token) on held-out general text it accepts. Each
evaluation after training compares ``eval/general_kl`` with it (:func:`crosses_budget`); the budget is crossed
(:func:`first_crossing`) at the evaluation that ends ``budget_patience`` evaluations in a row above it over which
the KL did not fall (the last no lower than the first). One evaluation is not enough: under MoL the KL rises in
the first steps, while the domain loss falls fastest and the KL term has not yet pulled the model back, then falls
(docs/engine.md has the demo's curve), so a budget judged at the first evaluation above it stopped such runs at
their first evaluation. A count alone is not enough either: how many evaluations the early rise spans depends on
``eval_every``; its fall does not. Every job marks the best checkpoint (:func:`best_checkpoint`): among the
evaluated checkpoints within the budget (all, without one), the best figure of ``best_metric``. The engine writes it to
``best.json`` in the run directory (:func:`write_best`), and whoever serves checkpoints reads it back
(:func:`read_best`).

A job with ``eval_tasks`` may also set ``max_task_drop``: the points (percent) any task's score
(``task/<name>/acc`` or ``.../exact_match``) may fall below the base's, its step-0 evaluation. The budget is also
crossed at the evaluation that ends ``budget_patience`` evaluations in a row with some task more than that below the
base (:func:`crosses_task_budget`; a task score has no early rise to let pass, so no "not falling" clause). Either
rule crossing is the same crossing, with the same ``on_budget``; a checkpoint over either is not within the budget.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from .export import ExportError
from .run_dir import BEST_FILE, BEST_NAME, RunDir, step_name
from .spec import BestMetric

KL_METRIC = "eval/general_kl"
TASK_PREFIX = "task/"  # task/<name>/acc or task/<name>/exact_match: a task's score, higher is better
METRICS: dict[BestMetric, tuple[str, int]] = {  # spec name -> (metric name, +1 higher is better / -1 lower is better)
    "domain_ppl": ("eval/domain_ppl", -1),
    "qa_exact_match": ("eval/qa_exact_match", +1),
}


def crosses_budget(metrics: Mapping[str, float], budget: float | None) -> bool:
    """Whether an evaluation's KL to the base is over ``budget`` (never without a budget or a KL figure)."""
    kl = metrics.get(KL_METRIC)
    return budget is not None and kl is not None and (not math.isfinite(kl) or kl > budget)


def metric_rule(metric: str) -> tuple[str, int]:
    """(metric name, +1 higher is better / -1 lower is better) of a ``best_metric``: a named one, or a task's."""
    return (metric, +1) if metric.startswith(TASK_PREFIX) else METRICS[metric]


def task_drops(metrics: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """Each task score of ``metrics`` the base has too: how many points (percent) it is below the base's (a figure
    that is not finite counts as an infinite drop)."""
    return {k: (base[k] - v) * 100 if math.isfinite(v) else math.inf for k, v in metrics.items()
            if k.startswith(TASK_PREFIX) and k in base and math.isfinite(base[k])}


def crosses_task_budget(metrics: Mapping[str, float], base: Mapping[str, float], max_drop: float | None) -> bool:
    """Whether some task's score is more than ``max_drop`` points below the base's (never without a budget)."""
    return max_drop is not None and any(d > max_drop for d in task_drops(metrics, base).values())


def first_crossing(evaluations: Mapping[int, Mapping[str, float]], budget: float | None,
                   patience: int = 1, max_task_drop: float | None = None) -> int | None:
    """The first step after training began (step 0 is the base) whose evaluation ends ``patience`` evaluations in a
    row over ``budget`` over which the KL did not fall, or ``patience`` in a row with a task more than
    ``max_task_drop`` below its step-0 score; else None."""
    steps, base = sorted(s for s in evaluations if s > 0), evaluations.get(0, {})
    for end in range(patience - 1, len(steps)):
        window = [evaluations[s] for s in steps[end - patience + 1:end + 1]]
        if all(crosses_budget(m, budget) for m in window) and not falling(window):
            return steps[end]
        if all(crosses_task_budget(m, base, max_task_drop) for m in window):
            return steps[end]
    return None


def falling(window: list[Mapping[str, float]]) -> bool:
    """Whether the KL of the last evaluation of ``window`` is below the first's (a figure that is not finite never
    falls)."""
    first, last = window[0][KL_METRIC], window[-1][KL_METRIC]
    return math.isfinite(first) and math.isfinite(last) and last < first


def within_budget(metrics: Mapping[str, float], budget: float | None, base: Mapping[str, float] | None = None,
                  max_task_drop: float | None = None) -> bool:
    """Whether an evaluation may be chosen as best: any without a budget, else one whose finite KL is within it
    and no task more than ``max_task_drop`` below the ``base`` evaluation's."""
    if crosses_task_budget(metrics, base or {}, max_task_drop):
        return False
    if budget is None:
        return True
    kl = metrics.get(KL_METRIC)
    return kl is not None and math.isfinite(kl) and kl <= budget


def best_checkpoint(history: Mapping[int, Mapping[str, float]], budget: float | None,
                    metric: BestMetric | str = "domain_ppl", base: Mapping[str, float] | None = None,
                    max_task_drop: float | None = None) -> int | None:
    """The step of the best checkpoint: ``history`` maps each checkpoint's step to its evaluation at that step.

    Candidates are those evaluated (a finite ``metric``) within ``budget``; the best ``metric`` wins (lowest
    domain perplexity, highest QA exact match or task score), ties going to the lower domain perplexity, then the
    earlier step. With ``max_task_drop``, a checkpoint with a task that far below the ``base`` evaluation's is not
    within the budget. None when no checkpoint qualifies.
    """
    name, sign = metric_rule(metric)

    def rank(step: int) -> tuple[float, float, int]:
        ppl = history[step].get("eval/domain_ppl")
        return -sign * history[step][name], ppl if ppl is not None and math.isfinite(ppl) else math.inf, step

    candidates = [step for step, metrics in history.items()
                  if metrics.get(name) is not None and math.isfinite(metrics[name])
                  and within_budget(metrics, budget, base, max_task_drop)]
    return min(candidates, key=rank, default=None)


def budget_message(step: int, metrics: Mapping[str, float], budget: float | None, stop: bool, patience: int = 1,
                   base: Mapping[str, float] | None = None, max_task_drop: float | None = None) -> str:
    """The ``budget`` event's message: the step, the figures over the budget (KL, or the tasks that dropped), the
    budget (and for how many evaluations it has been over it) and what happens next."""
    then = "stopping (on_budget: stop); checkpoints kept" if stop else "training goes on (on_budget: warn)"
    over = []
    if crosses_budget(metrics, budget):
        running = f" ({patience} evaluations in a row over it, not falling: budget_patience)" if patience > 1 else ""
        over.append(f"{KL_METRIC} = {metrics[KL_METRIC]:.4g} nats/token > max_general_kl = {budget:g}{running}")
    drops = {k: d for k, d in task_drops(metrics, base or {}).items() if d > (max_task_drop or math.inf)}
    if drops:
        running = f" ({patience} evaluations in a row: budget_patience)" if patience > 1 else ""
        shown = ", ".join(f"{k} {d:.3g} points below the base" for k, d in sorted(drops.items()))
        over.append(f"{shown} > max_task_drop = {max_task_drop:g}{running}")
    return f"forgetting budget crossed at step {step}: {'; '.join(over)}; {then}"


def write_best(out_dir: str | Path, step: int | None, metric: BestMetric | str, budget: float | None,
               evaluation: Mapping[str, float] | None, max_task_drop: float | None = None) -> None:
    """Record the best checkpoint in ``out_dir/best.json`` in one step (none yet: the file is removed)."""
    path = RunDir(out_dir).best_file
    if step is None:
        path.unlink(missing_ok=True)
        return
    record = {"step": step, "name": step_name(step), "metric": metric, "max_general_kl": budget,
              "max_task_drop": max_task_drop,
              "evaluation": dict(evaluation or {})}
    tmp = path.with_name(f".{BEST_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def read_best(out_dir: str | Path) -> int | None:
    """The step ``best.json`` names, or None before any evaluated checkpoint (or when it does not read back)."""
    try:
        step = json.loads(RunDir(out_dir).best_file.read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def checkpoint_path(given: str | Path) -> Path:
    """A checkpoint path as given, or for ``RUN/checkpoints/best`` the best checkpoint of RUN (ExportError if none)."""
    path = Path(given)
    run = RunDir.holding(path)
    if path.name != BEST_NAME or path.exists() or run is None:
        return path
    found = best_checkpoint_dir(run.path)
    if found is None:
        raise ExportError(f"{path}: the run has no best checkpoint yet (none evaluated at its step within its budget)")
    return found


def best_checkpoint_dir(out_dir: str | Path) -> Path | None:
    """The directory of the best checkpoint of the run in ``out_dir``, if it was recorded and still exists."""
    step = read_best(out_dir)
    if step is None:
        return None
    path = RunDir(out_dir).checkpoint(step)
    return path if path.is_dir() else None
