import os
import shutil

import pytest
import torch

from mol_engine.modeling import ModelError, add_lora, hidden_states, load_model, logits_head
from mol_engine.reference import (
    AdapterDisabledReference,
    FrozenCopyReference,
    OnDemandReference,
    make_reference,
    released_after,
)
from mol_engine.spec import JobSpec


def full_logits(model, ids):
    return logits_head(model)(hidden_states(model, ids, torch.ones_like(ids, dtype=torch.bool)))


def test_logits_head_reproduces_the_models_forward(tiny_model_dir):
    model = load_model(str(tiny_model_dir), torch.device("cpu"))
    ids = torch.randint(3, 300, (2, 10))
    torch.testing.assert_close(full_logits(model, ids), model(ids).logits)


def test_lora_reference_equals_base_logits_after_training(tiny_model_dir):
    base = load_model(str(tiny_model_dir), torch.device("cpu"))
    ids = torch.randint(3, 300, (2, 10))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        base_logits = base(ids).logits
    spec = JobSpec(base_model="m", domain_data=["d"], general_data=["g"], finetune="lora",
                   lora={"rank": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    model = add_lora(load_model(str(tiny_model_dir), torch.device("cpu")), spec)
    reference = AdapterDisabledReference(model)
    # train the adapter a few steps so the LoRA model really differs from the base
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        full_logits(model, ids).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        assert (full_logits(model, ids) - base_logits).abs().max() > 1e-3
        ref_logits = reference.head(reference.hidden(ids, mask))
    torch.testing.assert_close(ref_logits, base_logits, rtol=1e-5, atol=1e-5)
    assert model.training is True  # the reference restored the training mode
    frozen_params = sum(p.numel() for p in model.parameters())
    assert frozen_params == sum(p.numel() for p in base.parameters()) + sum(
        p.numel() for p in model.parameters() if p.requires_grad)  # no second copy of the weights


def test_frozen_copy_is_independent_of_training(tiny_model_dir):
    model = load_model(str(tiny_model_dir), torch.device("cpu"))
    ids = torch.randint(3, 300, (1, 8))
    with torch.no_grad():
        before = model(ids).logits
    reference = FrozenCopyReference.load(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    out = reference.head(reference.hidden(ids, torch.ones_like(ids, dtype=torch.bool)))
    torch.testing.assert_close(out, before)
    assert not any(p.requires_grad for p in reference.model.parameters())


def test_frozen_copy_is_loaded_in_the_compute_dtype_without_a_float32_copy(tiny_model_dir, monkeypatch):
    from mol_engine import reference as module

    loads = []

    def recording_load(path, device, dtype=torch.float32, matmul_dtype=None, **options):
        loads.append(dtype)
        return load_model(path, device, dtype, matmul_dtype, **options)

    monkeypatch.setattr(module, "load_model", recording_load)
    reference = make_reference(torch.nn.Linear(1, 1), lora=False, resident=True, path=str(tiny_model_dir),
                               device=torch.device("cpu"), dtype=torch.bfloat16)
    assert loads == [torch.bfloat16]  # the only load, straight in bf16
    assert {p.dtype for p in reference.model.parameters()} == {torch.bfloat16}
    base = load_model(str(tiny_model_dir), torch.device("cpu"))
    for (name, p), (_, q) in zip(reference.model.named_parameters(), base.named_parameters(), strict=True):
        assert torch.equal(p, q.to(torch.bfloat16)), name  # what casting the float32 base gave before


def test_on_demand_reference_holds_no_weights_between_uses(tiny_model_dir, base_loads):
    reference = make_reference(torch.nn.Linear(1, 1), lora=False, resident=False, path=str(tiny_model_dir),
                               device=torch.device("cpu"), dtype=torch.float32)
    assert isinstance(reference, OnDemandReference) and not reference.resident and base_loads == []
    ids = torch.randint(3, 300, (2, 8))
    mask = torch.ones_like(ids, dtype=torch.bool)
    resident = FrozenCopyReference.load(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    expected = resident.head(resident.hidden(ids, mask))
    for _ in range(2):
        with released_after(reference) as ref:
            assert torch.equal(ref.head(ref.hidden(ids, mask)), expected)  # the exact base distribution
            assert reference.resident
        assert not reference.resident
    assert len(base_loads) == 3 and base_loads.freed(1) and not base_loads.freed()  # each use's copy is freed


def test_on_demand_reference_refuses_a_base_changed_during_the_run(tiny_model_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    reference = OnDemandReference(str(base), torch.device("cpu"), torch.float32)
    weights = base / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    ids = torch.randint(3, 300, (1, 8))
    with pytest.raises(ModelError, match="changed during the run"):
        reference.hidden(ids, torch.ones_like(ids, dtype=torch.bool))
