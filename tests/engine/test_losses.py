import math

import pytest
import torch
import torch.nn.functional as F

from mol_engine.losses import chunked_ce_split, chunked_kl_sum, mol_loss, token_cross_entropy, token_kl


def brute_force_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, by the textbook sum, in float64."""
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    return (p * (p.log() - q.log())).sum(-1)


def test_kl_is_zero_for_identical_distributions():
    logits = torch.randn(7, 50)
    assert token_kl(logits, logits.clone(), "reverse").abs().max() < 1e-6
    assert token_kl(logits, logits.clone(), "forward").abs().max() < 1e-6


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_kl_matches_brute_force_with_padding(direction):
    torch.manual_seed(0)
    model_logits, ref_logits = torch.randn(3, 9, 40) * 3, torch.randn(3, 9, 40) * 3
    valid = torch.rand(3, 9) > 0.3  # padding positions are False
    valid[0, 0] = True
    got = token_kl(model_logits[valid], ref_logits[valid], direction).sum() / valid.sum()
    p, q = (model_logits, ref_logits) if direction == "reverse" else (ref_logits, model_logits)
    expected = (brute_force_kl(p, q) * valid).sum() / valid.sum()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # the two directions really differ on these logits, so a swapped direction would be caught
    other = "forward" if direction == "reverse" else "reverse"
    assert abs(token_kl(model_logits[valid], ref_logits[valid], other).mean() - got).item() > 1e-3


def test_kl_gradient_flows_only_into_the_model():
    logits = torch.randn(4, 20, requires_grad=True)
    ref = torch.randn(4, 20, requires_grad=True)
    token_kl(logits, ref).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert ref.grad is None


def test_cross_entropy_is_negative_log_likelihood():
    logits = torch.randn(5, 11)
    targets = torch.randint(0, 11, (5,))
    expected = -torch.log_softmax(logits, -1)[torch.arange(5), targets]
    torch.testing.assert_close(token_cross_entropy(logits, targets), expected)


def test_cross_entropy_hand_written_gradient_matches_autograd():
    logits = torch.randn(6, 13, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 13, (6,))
    assert torch.autograd.gradcheck(lambda z: token_cross_entropy(z, targets), (logits,))
    weights = torch.rand(6, dtype=torch.float64)
    (token_cross_entropy(logits, targets) * weights).sum().backward()
    expected = torch.autograd.grad((F.cross_entropy(logits, targets, reduction="none") * weights).sum(), logits)[0]
    torch.testing.assert_close(logits.grad, expected)


def test_bf16_logits_are_upcast_inside_the_kernel():
    """The loss of bf16 logits is float32 and equals the loss of the logits copied to float32 first (which the
    kernel no longer does), and the gradient comes back in the logits' dtype."""
    logits = torch.randn(7, 50).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 50, (7,))
    ce = token_cross_entropy(logits, targets)
    assert ce.dtype == torch.float32
    torch.testing.assert_close(ce, F.cross_entropy(logits.detach().float(), targets, reduction="none"))
    ce.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_chunks_are_sized_by_device():
    from mol_engine.losses import CPU_CHUNK_BYTES, chunk_size

    assert chunk_size(151_936, device=torch.device("cpu")) == CPU_CHUNK_BYTES // (4 * 151_936) == 110
    assert chunk_size(8192, device=torch.device("cpu")) == 512  # 64 MiB would be 2,048: slower on a CPU
    assert chunk_size(151_936, 4096, torch.device("cpu")) == 4096  # loss_chunk_tokens wins


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_sums_equal_unchunked_values_and_gradients(chunk):
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 30, bias=False)
    ref_head = torch.nn.Linear(8, 30, bias=False)
    hidden = torch.randn(10, 8, requires_grad=True)
    ref_hidden = torch.randn(10, 8)
    targets = torch.randint(0, 30, (10,))

    full = token_cross_entropy(head(hidden), targets).sum() + token_kl(head(hidden), ref_head(ref_hidden)).sum()
    full.backward()
    grad_full, head_grad_full = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    chunked = chunked_ce_split(hidden, head, targets, None, chunk)[0] + chunked_kl_sum(
        hidden, head, ref_hidden, ref_head, "reverse", chunk)
    chunked.backward()
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    torch.testing.assert_close(hidden.grad, grad_full, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, head_grad_full, rtol=1e-4, atol=1e-6)
    assert ref_head.weight.grad is None


@pytest.mark.parametrize("chunk", [3, 10])
def test_the_split_part_is_the_cross_entropy_of_its_positions_and_none_splits_nothing(chunk):
    torch.manual_seed(2)
    head, hidden, targets = torch.nn.Linear(8, 30, bias=False), torch.randn(10, 8), torch.randint(0, 30, (10,))
    second = torch.arange(10) >= 6  # CPT: domain rows' positions first, then the general rows'
    total, part = chunked_ce_split(hidden, head, targets, second, chunk)
    whole, nothing = chunked_ce_split(hidden, head, targets, None, chunk)
    assert total.item() == pytest.approx(whole.item(), rel=1e-6) and nothing.item() == 0.0
    assert part.item() == pytest.approx(token_cross_entropy(head(hidden[6:]), targets[6:]).sum().item(), rel=1e-5)


def test_empty_selection_sums_to_zero_and_keeps_graph():
    head = torch.nn.Linear(4, 6)
    hidden = torch.randn(0, 4, requires_grad=True)
    total = chunked_ce_split(hidden, head, torch.zeros(0, dtype=torch.long), None, 8)[0]
    assert total.item() == 0.0 and total.requires_grad


def test_mol_loss_combines_means_with_weight():
    loss = mol_loss(torch.tensor(6.0), 3, torch.tensor(2.0), 4, kl_weight=0.5)
    assert loss.item() == pytest.approx(6 / 3 + 0.5 * 2 / 4)
    assert mol_loss(torch.tensor(6.0), 3, torch.tensor(0.0), 0, 1.0).item() == pytest.approx(2.0)
    assert math.isfinite(mol_loss(torch.tensor(0.0), 0, torch.tensor(0.0), 0, 1.0).item())


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_kl_hand_written_gradient_matches_autograd(direction):
    torch.manual_seed(3)
    logits = torch.randn(5, 13, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(5, 13, dtype=torch.float64) * 2
    assert torch.autograd.gradcheck(lambda z: token_kl(z, ref, direction), (logits,))
    # and against the textbook formula differentiated by autograd
    weights = torch.rand(5, dtype=torch.float64)
    (token_kl(logits, ref, direction) * weights).sum().backward()
    p, q = (logits, ref) if direction == "reverse" else (ref, logits)
    expected = torch.autograd.grad((brute_force_kl(p, q) * weights).sum(), logits)[0]
    torch.testing.assert_close(logits.grad, expected)


def test_kl_keeps_the_logits_dtype_for_its_gradient():
    logits = torch.randn(3, 17, dtype=torch.bfloat16, requires_grad=True)
    kl = token_kl(logits, torch.randn(3, 17))
    assert kl.dtype == torch.float32
    kl.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_in_place_log_softmax_of_the_reference_is_bit_exact():
    from mol_engine.losses import _log_softmax_

    logits = torch.randn(37, 1000) * 4
    expected = torch.log_softmax(logits, -1)
    fresh = logits.clone()
    out = _log_softmax_(fresh)
    assert out.data_ptr() == fresh.data_ptr() and torch.equal(out, expected)  # no second [N, V] buffer


def head_grad_relerr(chunk: int, term: str, n: int = 2048, hidden_size: int = 64, vocab: int = 512) -> float:
    """Relative error of the head's gradient of a chunked loss under CPU bf16 autocast, against float64."""
    g = torch.Generator().manual_seed(0)
    head, ref_head = torch.nn.Linear(hidden_size, vocab, bias=False), torch.nn.Linear(hidden_size, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5)
        ref_head.weight.copy_(head.weight + 0.3 * torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5)
    hidden = torch.randn(n, hidden_size, generator=g, requires_grad=True)
    targets = torch.randint(0, vocab, (n,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if term == "ce":
            total = chunked_ce_split(hidden, head, targets, None, chunk)[0]
        else:
            total = chunked_kl_sum(hidden, head, hidden.detach(), ref_head, "reverse", chunk)
    total.backward()
    w64 = head.weight.detach().double().requires_grad_()
    logits = hidden.detach().double() @ w64.T
    if term == "ce":
        expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    else:
        expected = brute_force_kl(logits, hidden.detach().double() @ ref_head.weight.double().T).sum()
    (grad,) = torch.autograd.grad(expected, w64)
    return ((head.weight.grad.double() - grad).norm() / grad.norm()).item()


@pytest.mark.parametrize("term", ["ce", "kl"])
def test_head_gradient_over_256_chunks_is_as_accurate_as_over_one(term):
    """Under bf16 autocast each chunk's head gradient is summed in float32, not in the bf16 cast of the weight
    (issue 19, item 6: 256 chunks gave 7x the error of one)."""
    one, many = head_grad_relerr(2048, term), head_grad_relerr(8, term)
    assert one < 0.05 and many <= 1.5 * one, (one, many)
