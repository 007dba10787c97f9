"""Runs that must stop: a loss gone non-finite (before the optimizer applies it), a cancel before step 1."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from mol_engine.callbacks import Callback, JsonlLogger
from mol_engine.distributed import StepLosses
from mol_engine.token_store import cache_root
from mol_engine.train import TrainError, setup_run, train, train_step


def poison_step(monkeypatch, at_step: int, term: str = "general_kl") -> None:
    """From optimizer step ``at_step`` on (grad_accum 1: one forward a step), ``term`` becomes NaN, in the graph."""
    forward, calls = StepLosses.forward, [0]

    def poisoned(self, *args, **kwargs):
        sums = forward(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] < at_step:
            return sums
        return dataclasses.replace(sums, **{term: getattr(sums, term) * float("nan")})

    monkeypatch.setattr(StepLosses, "forward", poisoned)


def test_a_non_finite_loss_never_reaches_the_weights(make_spec, tmp_path, monkeypatch):
    run = setup_run(make_spec(), tmp_path)
    before = [p.detach().clone() for p in run.model.parameters()]
    poison_step(monkeypatch, at_step=1, term="domain_ce")
    with pytest.raises(TrainError, match=r"non-finite loss at step 1: train/domain_ce = nan"):
        train_step(run, 1)
    for old, new in zip(before, run.model.parameters(), strict=True):
        assert torch.equal(old, new)


def test_a_diverging_run_fails_naming_step_and_loss_and_keeps_its_checkpoint(make_spec, tmp_path, monkeypatch):
    poison_step(monkeypatch, at_step=5)
    with pytest.raises(TrainError) as info:
        train(make_spec(max_steps=6, save_every=3), tmp_path, [JsonlLogger(tmp_path)])
    message = str(info.value)
    assert "non-finite loss at step 5: train/general_kl = nan" in message and "step-3 is kept" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-3"]
    points = [json.loads(line, parse_constant=pytest.fail) for line in (tmp_path / "metrics.jsonl").open()]
    assert max(p["step"] for p in points) == 4  # step 5 logged nothing
    assert all(math.isfinite(v) for p in points for v in p.values() if v is not None)


class CancelOn(Callback):
    """Records events and asks to stop once an event of ``kind`` arrived (a user's cancel during that phase)."""

    def __init__(self, kind: str) -> None:
        self.kind, self.events, self.steps = kind, [], []

    def on_event(self, event):
        self.events.append(event)

    def on_metrics(self, step, metrics):
        self.steps.append(step)

    def should_stop(self) -> bool:
        return any(e["kind"] == self.kind for e in self.events)


def test_a_cancel_while_sampling_ends_the_run_before_step_1(make_spec, tmp_path):
    cancel = CancelOn("self-sample")
    spec = make_spec(general_data=[], general_source="self", self_sample_tokens=1_000_000)
    result = train(spec, tmp_path / "run", [cancel])
    assert (result.status, result.step, cancel.steps) == ("cancelled", 0, [])
    sampled = [e for e in cancel.events if e["kind"] == "self-sample"]
    assert sampled[0]["tokens"] > 0 and sampled[0]["tokens_per_s"] > 0 and 0 < sampled[0]["fraction"] < 1
    assert "of 1,000,000 tokens" in sampled[0]["message"]
    assert cancel.events[-1]["kind"] == "cancelled" and "while sampling" in cancel.events[-1]["message"]
    assert not (tmp_path / "run" / "general_self.jsonl").exists()


@pytest.mark.parametrize(("kind", "extra", "left"), [("token-store", {}, "tokens-*"),
                                                     ("reference-cache", {"reference": "cached"}, "topk-*")])
def test_a_cancel_while_tokenizing_or_caching_ends_the_run_and_keeps_nothing_half_made(
        make_spec, corpora, tmp_path, kind, extra, left):
    data = {name: shutil.copy(corpora[name], tmp_path / f"{name}.jsonl") for name in ("domain", "general")}
    cancel = CancelOn(kind)
    spec = make_spec(domain_data=[str(data["domain"])], general_data=[str(data["general"])], **extra)
    result = train(spec, tmp_path / "run", [cancel])
    assert (result.status, result.step, cancel.steps) == ("cancelled", 0, [])
    assert cancel.events[-1]["kind"] == "cancelled" and "while" in cancel.events[-1]["message"]
    assert list(cache_root(data["general"]).glob(left)) == []
    assert list(cache_root(data["general"]).glob(".building-*")) == []


def test_caching_the_reference_reports_progress(make_spec, corpora, tmp_path, monkeypatch):
    from mol_engine import reference_cache

    monkeypatch.setattr(reference_cache, "PROGRESS_EVERY_S", 0.0)  # a point before every batch
    general = shutil.copy(corpora["general"], tmp_path / "general.jsonl")
    cancel = CancelOn("never")
    train(make_spec(general_data=[str(general)], reference="cached", max_steps=1), tmp_path / "run", [cancel])
    cached = [e["message"] for e in cancel.events if e["kind"] == "reference-cache"]
    assert cached[0].startswith("caching the reference's top-64 on") and cached[-1].startswith("cached the")
    assert any(m.startswith("caching the reference: 0 of ") and "blocks/s, ETA" in m for m in cached[1:-1])
