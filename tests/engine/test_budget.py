"""The forgetting budget and the best checkpoint within it: the pure rules on crafted histories, the spec's
checks, and tiny runs that cross a budget (stop, warn) and keep their best checkpoint through retention."""

import importlib
import json
import math

import pytest
from pydantic import ValidationError

from mol_engine.budget import best_checkpoint, first_crossing, read_best
from mol_engine.callbacks import Callback
from mol_engine.run_dir import BEST_FILE
from mol_engine.spec import JobSpec, format_validation_error
from mol_engine.train import train

train_module = importlib.import_module("mol_engine.train")  # the package's name `train` is the function
HELDOUT = train_module.heldout_metrics

HISTORY = {  # step -> evaluation at that step, as the engine records them
    2: {"eval/domain_ppl": 9.0, "eval/general_kl": 0.01, "eval/qa_exact_match": 0.25},
    4: {"eval/domain_ppl": 6.0, "eval/general_kl": 0.05, "eval/qa_exact_match": 0.50},
    6: {"eval/domain_ppl": 4.0, "eval/general_kl": 0.20, "eval/qa_exact_match": 0.50},
    8: {"eval/domain_ppl": 3.0, "eval/general_kl": 0.40, "eval/qa_exact_match": 0.75},
}


@pytest.mark.parametrize(("budget", "metric", "best"), [
    (None, "domain_ppl", 8),  # no budget: the lowest perplexity of all
    (0.1, "domain_ppl", 4),  # within 0.1: steps 2 and 4
    (0.2, "domain_ppl", 6),  # a KL equal to the budget is within it
    (0.001, "domain_ppl", None),  # nothing within
    (None, "qa_exact_match", 8),
    (0.3, "qa_exact_match", 6),  # 4 and 6 tie at 0.5: the lower perplexity wins
])
def test_best_checkpoint_on_a_crafted_history(budget, metric, best):
    assert best_checkpoint(HISTORY, budget, metric) == best


def test_best_checkpoint_skips_unevaluated_and_non_finite_figures():
    history = {3: {}, 5: {"eval/domain_ppl": math.nan, "eval/general_kl": 0.0},
               7: {"eval/domain_ppl": 8.0, "eval/general_kl": math.inf}, 9: {"eval/domain_ppl": 8.0}}
    assert best_checkpoint(history, None) == 7
    assert best_checkpoint(history, 1.0) is None  # 7's KL is not finite, 9 has none: neither is within a budget
    assert best_checkpoint({}, None) is None


# eval/general_kl of the demo's MoL run (examples/demo-mol.yaml, evaluated every 10 steps; docs/engine.md): it
# rises at once, then falls as the KL term pulls the model back, flat for a while at 130-150; 0.041 at step 400
DEMO_KL = {0: 0.0, 10: 0.3603, 20: 0.305, 30: 0.252, 40: 0.2202, 50: 0.1899, 60: 0.1543, 70: 0.1346, 80: 0.1211,
           90: 0.1129, 100: 0.105, 110: 0.0951, 120: 0.0903, 130: 0.083, 140: 0.0834, 150: 0.0845, 160: 0.0741,
           170: 0.0718, 180: 0.07, 190: 0.0708, 200: 0.0667, 210: 0.0584, 220: 0.059, 230: 0.0555, 240: 0.055,
           250: 0.0548, 260: 0.0554, 270: 0.0514, 280: 0.0481}


def kl_history(curve: dict[int, float]) -> dict[int, dict[str, float]]:
    return {step: {"eval/general_kl": kl} for step, kl in curve.items()}


def test_the_early_rise_of_the_kl_crosses_no_budget_under_patience():
    patience = JobSpec.model_fields["budget_patience"].default
    for every in (10, 20, 50, 100):
        history = kl_history({step: kl for step, kl in DEMO_KL.items() if step % every == 0})
        for budget in (0.05, 0.08, 0.1, 0.2, 0.3):  # the run ends within each of them
            assert first_crossing(history, budget, patience) is None  # over it, but falling
            if budget < DEMO_KL[every]:  # judged alone: stopped at the first evaluation
                assert first_crossing(history, budget, patience=1) == every
    assert first_crossing(kl_history(DEMO_KL), 0.08, patience=3) == 150  # why 4: the flat stretch at 130-150


def test_a_sustained_crossing_crosses_at_the_patience_th_evaluation_over():
    rising = {0: 0.0, 10: 0.05, 20: 0.12, 30: 0.15, 40: 0.2}
    assert first_crossing(kl_history(rising), 0.1, patience=3) == 40  # 20, 30, 40 over it and rising
    plateau = {10: 0.3, 20: 0.29, 30: 0.31, 40: 0.3}
    assert first_crossing(kl_history(plateau), 0.1, patience=3) == 30  # a dip between is no fall over the three
    dipped = {10: 0.3, 20: 0.05, 30: 0.3, 40: 0.3, 50: 0.35}
    assert first_crossing(kl_history(dipped), 0.1, patience=3) == 50  # an evaluation within it starts the count over
    assert first_crossing(kl_history(rising | {50: math.nan}), 0.25, patience=1) == 50  # not finite: over


def test_first_crossing_ignores_the_base_evaluation():
    evaluations = {0: {"eval/general_kl": 0.5}, **HISTORY}
    assert first_crossing(evaluations, 0.1) == 6
    assert first_crossing(evaluations, 1.0) is None and first_crossing(evaluations, None) is None


@pytest.mark.parametrize("value", [0, -0.5, float("inf"), float("nan")])
def test_a_budget_must_be_positive_and_finite(make_spec, value):
    with pytest.raises(ValidationError) as info:
        make_spec(max_general_kl=value)
    assert format_validation_error(info.value).startswith("max_general_kl: ")


def test_a_budget_needs_general_text_and_qa_best_needs_a_qa_set(make_spec):
    with pytest.raises(ValidationError, match="max_general_kl needs held-out general text"):
        make_spec(method="domain_only", general_data=[], max_general_kl=0.1)
    with pytest.raises(ValidationError, match="best_metric 'qa_exact_match' needs eval_data"):
        make_spec(eval_data=None, best_metric="qa_exact_match")
    assert JobSpec.model_validate(make_spec().model_dump()).on_budget == "warn"


class Events(Callback):
    def __init__(self) -> None:
        self.events = []

    def on_event(self, event):
        self.events.append(event)


def test_stop_ends_the_run_at_the_crossing_as_succeeded_keeping_the_checkpoint_before(make_spec, tmp_path):
    events = Events()
    spec = make_spec(eval_data=None, max_steps=6, eval_every=2, save_every=1, keep_checkpoints=1,
                     max_general_kl=1e-9, on_budget="stop", budget_patience=1)  # each evaluation judged alone
    result = train(spec, tmp_path, [events])
    assert (result.status, result.reason, result.step) == ("succeeded", "budget", 2)
    budget = [e for e in events.events if e["kind"] == "budget"]
    assert len(budget) == 1 and budget[0]["step"] == 2
    assert "step 2" in budget[0]["message"] and "max_general_kl = 1e-09" in budget[0]["message"]
    assert budget[0]["general_kl"] > 1e-9
    assert events.events[-1]["kind"] == "succeeded" and events.events[-1]["reason"] == "budget"
    # the crossing and the checkpoint before it, despite keep_checkpoints=1; none is within the budget
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert read_best(tmp_path) is None and not (tmp_path / BEST_FILE).exists()


def crafted_figures(monkeypatch, figures: list[tuple[float, float]]) -> None:
    """Each held-out evaluation, in turn, reports the next (domain_ppl, general_kl) of ``figures``."""
    calls = iter(figures)

    def crafted(*args, **kwargs):
        ppl, kl = next(calls)
        return HELDOUT(*args, **kwargs) | {"eval/domain_ppl": ppl, "eval/general_kl": kl}

    monkeypatch.setattr(train_module, "heldout_metrics", crafted)


def test_stop_lets_the_early_rise_pass_and_stops_a_sustained_crossing(make_spec, tmp_path, monkeypatch):
    spec = make_spec(eval_data=None, max_steps=6, eval_every=1, save_every=6, max_general_kl=0.1, on_budget="stop")
    # steps 0..6 report these KLs: above the budget from step 1, falling until it is within it
    crafted_figures(monkeypatch, [(20.0, 0.0), (9.0, 0.36), (8.0, 0.3), (7.0, 0.25), (6.0, 0.2), (5.0, 0.12),
                                  (4.0, 0.09)])
    events = Events()
    result = train(spec, tmp_path / "hump", [events])
    assert (result.status, result.reason, result.step) == ("succeeded", None, 6)  # before: stopped at step 1
    assert not [e for e in events.events if e["kind"] == "budget"]

    crafted_figures(monkeypatch, [(20.0, 0.0), (9.0, 0.05), (8.0, 0.12), (7.0, 0.15), (6.0, 0.14), (5.0, 0.3),
                                  (4.0, 0.35)])
    result = train(spec, tmp_path / "sustained", [events])
    assert (result.status, result.reason, result.step) == ("succeeded", "budget", 5)  # steps 2 to 5 over it
    (budget,) = [e for e in events.events if e["kind"] == "budget"]
    assert budget["budget_patience"] == 4 and "4 evaluations in a row over it, not falling" in budget["message"]


def test_warn_goes_on_with_one_event_and_retention_keeps_the_best_within_budget(make_spec, tmp_path, monkeypatch):
    # steps 0, 2, 4, 6: step 4 crosses 0.3; step 6 has the lowest perplexity but is over the budget
    crafted_figures(monkeypatch, [(20.0, 0.0), (9.0, 0.1), (5.0, 0.5), (4.0, 0.35)])
    events = Events()
    spec = make_spec(eval_data=None, max_steps=6, eval_every=2, save_every=2, keep_checkpoints=1,
                     max_general_kl=0.3, budget_patience=1)
    result = train(spec, tmp_path, [events])
    assert (result.status, result.reason, result.step) == ("succeeded", None, 6)
    assert [e["step"] for e in events.events if e["kind"] == "budget"] == [4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-6"]
    best = json.loads((tmp_path / BEST_FILE).read_text())
    assert best["step"] == 2 and best["evaluation"]["eval/domain_ppl"] == 9.0 and best["max_general_kl"] == 0.3

    # resumed for two more steps: the crossing is remembered (no second event); a better step 8 within the budget
    # becomes the best, and the old best, no longer protected, goes
    crafted_figures(monkeypatch, [(3.0, 0.2)])
    resumed = Events()
    assert train(spec.model_copy(update={"max_steps": 8}), tmp_path, [resumed], resume=True).step == 8
    assert not [e for e in resumed.events if e["kind"] == "budget"]
    assert read_best(tmp_path) == 8 and [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-8"]
