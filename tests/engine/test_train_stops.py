"""Runs that must stop: a loss gone non-finite (before the optimizer applies it), a cancel before step 1."""

import dataclasses
import json
import math

import pytest
import torch

from mol_engine.callbacks import JsonlLogger
from mol_engine.distributed import StepLosses
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
