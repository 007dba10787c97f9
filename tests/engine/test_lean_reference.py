"""Runs that do not train against the base hold none of its weights while training, and still measure the exact
KL to it at evaluation; MoL with the exact reference keeps one frozen copy, in the compute dtype."""

import shutil

import pytest
import torch

from mol_engine.callbacks import Callback
from mol_engine.reference import FrozenCopyReference, OnDemandReference
from mol_engine.train import _evaluate, setup_run, train_step


class Events(Callback):
    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_event(self, event: dict) -> None:
        self.events.append(event)

    def config(self) -> str:
        return next(e["message"] for e in self.events if e["kind"] == "config")


def assert_exact_gauge(run, measured: dict[str, float]) -> None:
    """The run's evaluation equals one against a frozen copy kept resident, as runs held before."""
    run.reference = FrozenCopyReference.load(run.spec.base_model, run.device, run.dtype)
    resident = _evaluate(run, 2, Callback())
    assert measured["eval/general_kl"] == resident["eval/general_kl"] > 0
    assert measured == resident


@pytest.mark.parametrize("method", ["cpt", "domain_only"])
def test_baseline_holds_no_reference_while_training_and_its_kl_gauge_is_exact(make_spec, tmp_path, base_loads,
                                                                              method):
    events = Events()
    run = setup_run(make_spec(method=method), tmp_path, events)
    assert isinstance(run.reference, OnDemandReference) and not run.reference.resident and base_loads == []
    assert "holds=none eval_reference=on-demand" in events.config()
    assert "kl_weight" not in events.config() and " reference=" not in events.config()  # CPT has no reference
    for step in (1, 2):
        train_step(run, step)
        assert not run.reference.resident and base_loads == []
    measured = _evaluate(run, 2, Callback())
    assert not run.reference.resident and len(base_loads) == 1 and base_loads.freed()  # loaded, then freed
    assert_exact_gauge(run, measured)


def test_cached_mol_frees_the_base_after_building_its_cache(make_spec, corpora, tmp_path, base_loads):
    data = tmp_path / "general.jsonl"
    shutil.copy(corpora["general"], data)
    events = Events()
    run = setup_run(make_spec(general_data=[str(data)], reference="cached", reference_top_k=16), tmp_path / "run",
                    events)
    assert run.cached is not None and isinstance(run.reference, OnDemandReference)
    assert len(base_loads) == 1 and base_loads.freed()  # loaded for the build only
    assert "holds=cached-top-k eval_reference=on-demand" in events.config()
    assert "reference=cached " in events.config()  # as the spec names it
    for step in (1, 2):
        train_step(run, step)
        assert not run.reference.resident and len(base_loads) == 1
    measured = _evaluate(run, 2, Callback())
    assert not run.reference.resident and base_loads.freed()
    assert_exact_gauge(run, measured)


def test_exact_mol_keeps_one_frozen_copy_in_the_compute_dtype(make_spec, tmp_path, base_loads):
    events = Events()
    run = setup_run(make_spec(precision="bf16"), tmp_path, events)
    assert isinstance(run.reference, FrozenCopyReference) and len(base_loads) == 1
    assert {p.dtype for p in run.reference.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}  # the trained weights stay fp32 masters
    assert "reference=exact " in events.config() and "holds=frozen-copy eval_reference=frozen-copy" in events.config()
