"""Per-row routing: under MoL domain rows only feed CE and general rows only feed KL."""

import pytest
import torch

from mol_engine.batches import Batch
from mol_engine.modeling import load_model, load_tokenizer
from mol_engine.objective import batch_losses
from mol_engine.reference import FrozenCopyReference


@pytest.fixture
def setup(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), torch.device("cpu"))
    reference = FrozenCopyReference.load(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    with torch.no_grad():  # move the model away from the base so the KL is non-zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (4, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[3, 9:] = False  # padding in a general row
    batch = Batch(ids, mask, torch.tensor([False, False, True, True]))
    return model, reference, batch, tokenizer.eos_token_id


def losses(model, reference, batch, eos, method="mol", chunk=5):
    return batch_losses(model, batch, method=method, eos_id=eos, chunk=chunk, reference=reference)


def test_token_counts_follow_the_rows(setup):
    model, reference, batch, eos = setup
    sums = losses(model, reference, batch, eos)
    valid = batch.target_mask(eos)
    assert sums.n_domain == int(valid[:2].sum())
    assert sums.n_general_kl == int(valid[2:].sum()) == 11 + 8
    assert sums.n_general_ce == 0 and sums.general_ce.item() == 0.0
    assert sums.general_kl.item() > 0


def test_changing_general_rows_leaves_ce_and_changing_domain_rows_leaves_kl(setup):
    model, reference, batch, eos = setup
    before = losses(model, reference, batch, eos)
    ids = batch.input_ids.clone()
    ids[2:] = torch.flip(ids[2:], dims=[1])
    after_general = losses(model, reference, Batch(ids, batch.attention_mask, batch.is_general), eos)
    assert after_general.domain_ce.item() == pytest.approx(before.domain_ce.item(), rel=1e-6)
    assert abs(after_general.general_kl.item() - before.general_kl.item()) > 1e-4
    ids = batch.input_ids.clone()
    ids[:2] = torch.flip(ids[:2], dims=[1])
    after_domain = losses(model, reference, Batch(ids, batch.attention_mask, batch.is_general), eos)
    assert after_domain.general_kl.item() == pytest.approx(before.general_kl.item(), rel=1e-6)
    assert abs(after_domain.domain_ce.item() - before.domain_ce.item()) > 1e-4


def test_kl_ignores_padding_positions(setup):
    model, reference, batch, eos = setup
    before = losses(model, reference, batch, eos)
    ids = batch.input_ids.clone()
    ids[3, 9:] = 7  # change only padded positions
    after = losses(model, reference, Batch(ids, batch.attention_mask, batch.is_general), eos)
    assert after.general_kl.item() == pytest.approx(before.general_kl.item(), rel=1e-6)


def test_cpt_puts_ce_on_every_row_and_no_kl(setup):
    model, reference, batch, eos = setup
    sums = losses(model, reference, batch, eos, method="cpt")
    assert sums.n_general_ce == 19 and sums.general_ce.item() > 0
    assert sums.n_general_kl == 0 and sums.general_kl.item() == 0.0


def test_kl_is_zero_when_the_model_is_the_base(tiny_model_dir, setup):
    _, reference, batch, eos = setup
    base = load_model(str(tiny_model_dir), torch.device("cpu"))
    assert losses(base, reference, batch, eos).general_kl.item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_rows_only_through_their_own_term(setup):
    """CE's gradient touches only domain rows' inputs; KL's only general rows' inputs."""
    model, reference, batch, eos = setup
    captured = []

    def keep(module, args, output):
        output.retain_grad()
        captured.append(output)

    handle = model.get_input_embeddings().register_forward_hook(keep)
    try:
        losses(model, reference, batch, eos).domain_ce.backward()
        grad = captured[-1].grad.abs().sum(dim=(1, 2))
        assert (grad[:2] > 0).all() and (grad[2:] == 0).all()
        losses(model, reference, batch, eos).general_kl.backward()
        grad = captured[-1].grad.abs().sum(dim=(1, 2))
        assert (grad[:2] == 0).all() and (grad[2:] > 0).all()
    finally:
        handle.remove()
