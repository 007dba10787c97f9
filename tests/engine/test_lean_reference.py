"""Runs that do not train against the base hold none of its weights while training, and still measure the exact
KL to it at evaluation; MoL with the exact reference keeps one frozen copy that computes as the trained weights do,
so the KL is 0 at step 0."""

import shutil

import pytest
import torch

from mol_engine.callbacks import Callback
from mol_engine.reference import FrozenCopyReference, OnDemandReference
from mol_engine.train import _evaluate, reference_dtype, setup_run, train_step


class Events(Callback):
    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_event(self, event: dict) -> None:
        self.events.append(event)

    def config(self) -> str:
        return next(e["message"] for e in self.events if e["kind"] == "config")


def assert_exact_gauge(run, measured: dict[str, float]) -> None:
    """The run's evaluation equals one against a frozen copy kept resident, as runs held before."""
    run.reference = FrozenCopyReference.load(run.spec.base_model, run.device, run.reference.dtype)
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


def test_exact_mol_keeps_one_frozen_copy_that_computes_as_the_trained_weights(make_spec, tmp_path, base_loads):
    events = Events()
    run = setup_run(make_spec(precision="bf16"), tmp_path, events)
    assert isinstance(run.reference, FrozenCopyReference) and len(base_loads) == 1
    # the base computes as the trained fp32 masters do under bf16 autocast: the matmul weights autocast casts are
    # stored in bf16 already, the rest (embeddings, norms, a tied head) in fp32, as the masters (an all-bf16 copy
    # would compute otherwise, an all-fp32 one would take twice the memory of its matmul weights)
    dtypes = {name: p.dtype for name, p in run.reference.model.named_parameters()}
    linear = {name for name, m in run.reference.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {dtypes[f"{name}.weight"] for name in linear if f"{name}.weight" in dtypes} == {torch.bfloat16}
    assert {d for name, d in dtypes.items() if name.rsplit(".", 1)[0] not in linear} == {torch.float32}
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}  # the trained weights stay fp32 masters
    assert "reference=exact " in events.config() and "holds=frozen-copy eval_reference=frozen-copy" in events.config()


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its weight matrices scaled by 10: peaked next-token distributions, as a trained model's
    (the random one's are near uniform, where bf16 rounding hardly moves the KL)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = tmp_path_factory.mktemp("sharp-model")
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.mul_(10.0)
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.mark.parametrize(("method", "finetune", "reference"), [
    ("mol", "full", "exact"), ("mol", "full", "cached"), ("cpt", "full", "exact"), ("mol", "lora", "exact")])
def test_the_kl_to_the_base_is_zero_at_step_0_in_bf16(make_spec, sharp_model_dir, corpora, tmp_path, method,
                                                      finetune, reference):
    """issue 19, item 7: the reference computes as the trained model does under bf16 autocast (fp32 weights for full
    fine-tuning), so before any update the model is the base: the KL gauge, and MoL's exact training KL, read 0
    (a bf16 copy of the base read 2e-4 here)."""
    general = shutil.copy(corpora["general"], tmp_path / "general.jsonl")  # a cache of this model's own
    spec = make_spec(base_model=str(sharp_model_dir), general_data=[str(general)], precision="bf16", method=method,
                     finetune=finetune, reference=reference, sample_prompts=[])
    run = setup_run(spec, tmp_path / "run")
    assert _evaluate(run, 0, Callback())["eval/general_kl"] <= 1e-6
    if method == "mol" and reference == "exact":  # the first step's KL is measured before its update
        assert train_step(run, 1)["train/general_kl"] <= 1e-6


def test_the_frozen_copy_takes_the_dtype_the_trained_weights_compute_in(make_spec):
    from mol_engine.distributed import World

    full, lora, two = make_spec(precision="bf16"), make_spec(precision="bf16", finetune="lora"), World(0, 2)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert reference_dtype(full, cpu, World()) == reference_dtype(full, cpu, two) == torch.float32  # fp32 masters
    assert reference_dtype(full, cuda, World()) == torch.float32  # autocast casts the masters op by op
    assert reference_dtype(full, cuda, two) == torch.bfloat16  # FSDP on CUDA gathers every weight in bf16
    assert reference_dtype(lora, cpu, World()) == torch.bfloat16  # LoRA's base (and reference) is the model's own
