import torch

from mol_engine.modeling import add_lora, hidden_states, load_model, logits_head
from mol_engine.reference import AdapterDisabledReference, FrozenCopyReference
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
    reference = FrozenCopyReference(model, torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    out = reference.head(reference.hidden(ids, torch.ones_like(ids, dtype=torch.bool)))
    torch.testing.assert_close(out, before)
    assert not any(p.requires_grad for p in reference.model.parameters())
