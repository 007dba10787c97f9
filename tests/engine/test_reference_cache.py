"""The cached top-k reference: the bucketed KL, the cache files, and training against them."""

import json
import shutil

import pytest
import torch

from mol_engine import reference_cache
from mol_engine.callbacks import JsonlLogger
from mol_engine.corpus import split_corpus
from mol_engine.losses import token_kl, token_topk_kl
from mol_engine.modeling import load_model, load_tokenizer
from mol_engine.reference import FrozenCopyReference
from mol_engine.reference_cache import cache_key, load_or_build
from mol_engine.spec import JobSpec
from mol_engine.token_store import cache_root, open_or_build
from mol_engine.train import train


def targets_of(ref_logits, k):
    log_q = ref_logits.log_softmax(-1)
    values, index = log_q.topk(k, -1)
    tail = log_q.scatter(-1, index, float("-inf")).logsumexp(-1)
    return index, values, tail


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_bucketed_kl_is_the_full_kl_when_the_tail_holds_one_token(direction):
    torch.manual_seed(0)
    logits, ref = torch.randn(6, 12) * 2, torch.randn(6, 12) * 2
    index, values, tail = targets_of(ref, k=11)
    torch.testing.assert_close(token_topk_kl(logits, index, values, tail, direction), token_kl(logits, ref, direction))


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_bucketed_kl_is_zero_at_the_base_and_below_the_full_kl(direction):
    torch.manual_seed(1)
    logits, ref = torch.randn(32, 50) * 3, torch.randn(32, 50) * 3
    index, values, tail = targets_of(ref, k=5)
    assert token_topk_kl(ref, index, values, tail, direction).abs().max() < 1e-5
    bucketed, full = token_topk_kl(logits, index, values, tail, direction), token_kl(logits, ref, direction)
    assert (bucketed <= full + 1e-5).all() and bucketed.mean() > 0.1 * full.mean()  # coarser, not blind


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_bucketed_kl_hand_written_gradient_matches_autograd(direction):
    torch.manual_seed(4)
    ref = torch.randn(6, 15, dtype=torch.float64) * 2
    index, values, tail = targets_of(ref, k=4)
    logits = torch.randn(6, 15, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: token_topk_kl(z, index, values, tail, direction), (logits,))

    def textbook(z):  # the bucket probabilities by gather and masked sum, differentiated by autograd
        p = z.softmax(-1)
        top = p.gather(-1, index)
        buckets = torch.cat([top, (p.sum(-1) - top.sum(-1))[:, None]], -1)
        q = torch.cat([values, tail[:, None]], -1).exp()
        a, b = (buckets, q) if direction == "reverse" else (q, buckets)
        return (a * (a.log() - b.log())).sum(-1)

    torch.testing.assert_close(token_topk_kl(logits, index, values, tail, direction), textbook(logits))


def extreme_bucket_case() -> tuple[torch.Tensor, ...]:
    """Logits far from the cached targets: a model sure of a token outside the base's top-k (its top-k at e^-300),
    one sure of the top-k (its tail at e^-300), one with a top-k token at e^-400, and an ordinary row."""
    torch.manual_seed(5)
    ref = torch.randn(4, 30) * 2
    index, values, tail = targets_of(ref, k=4)
    logits = torch.randn(4, 30)
    outside = next(v for v in range(30) if v not in index[0])
    logits[0, outside] = 300.0
    logits[1] = -300.0
    logits[1, index[1]] = 0.0
    logits[2, index[2, 0]] = -400.0
    return logits, index, values, tail


def bucket_kl_float64(logits, index, values, tail, direction):
    """The bucketed KL in float64 from the textbook definition, the tail by log-sum-exp over its tokens."""
    log_p = logits.double().log_softmax(-1)
    log_tail = log_p.scatter(-1, index, float("-inf")).logsumexp(-1)
    log_b = torch.cat([log_p.gather(-1, index), log_tail[:, None]], -1)
    log_q = torch.cat([values, tail[:, None]], -1).double()
    if direction == "reverse":
        return (log_b.exp() * (log_b - log_q)).sum(-1)
    return (log_q.exp() * (log_q - log_b)).sum(-1)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_bucketed_kl_gives_finite_gradients_at_extreme_logits(direction):
    """issue 19, item 11: the forward KL's 1 − exp(log q − log P) overflowed to inf, and inf · 0 gave NaN, where the
    true gradient p_v − Q_b is bounded."""
    logits, index, values, tail = extreme_bucket_case()
    z = logits.clone().requires_grad_()
    token_topk_kl(z, index, values, tail, direction).sum().backward()
    z64 = logits.double().requires_grad_()
    bucket_kl_float64(z64, index, values, tail, direction).sum().backward()
    assert torch.isfinite(z.grad).all()
    torch.testing.assert_close(z.grad, z64.grad.float(), rtol=1e-4, atol=1e-6)


def test_bucketed_kl_gradient_pulls_the_model_towards_the_base():
    torch.manual_seed(2)
    ref = torch.randn(8, 40) * 3
    index, values, tail = targets_of(ref, k=4)
    logits = torch.randn(8, 40, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    first = None
    for _ in range(300):
        loss = token_topk_kl(logits, index, values, tail).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(logits.grad).all() and loss.item() < 0.01 * first
    # the model's top-k tokens now carry the base's probabilities
    torch.testing.assert_close(logits.log_softmax(-1).gather(-1, index), values, atol=0.02, rtol=0.0)


@pytest.fixture
def general_blocks(tiny_model_dir, corpora, tmp_path):
    data = tmp_path / "general.jsonl"
    shutil.copy(corpora["general"], data)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    corpus = split_corpus([open_or_build(data, tokenizer)], seq_len=32, heldout_fraction=0.1, seed=0,
                          pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    return data, corpus.train


def test_cache_holds_the_base_top_k_and_is_reused(tiny_model_dir, general_blocks, monkeypatch):
    monkeypatch.setattr(reference_cache, "PROGRESS_EVERY_S", float("inf"))  # no progress lines on a slow machine
    data, blocks = general_blocks
    model = load_model(str(tiny_model_dir), torch.device("cpu"))
    reference = FrozenCopyReference.load(str(tiny_model_dir), torch.device("cpu"), torch.float32)
    key = cache_key(tiny_model_dir, blocks, 8, torch.float32)
    messages = []
    build = dict(root=cache_root(data), key=key, k=8, vocab_size=320, device=torch.device("cpu"), batch_size=4,
                 chunk=40, log=messages.append)
    cached = load_or_build(reference, blocks, **build)
    assert cached.path.parent == data.with_name("general.jsonl.mol-cache") and cached.indices.dtype.name == "uint16"
    assert cached.indices.shape == (len(blocks), 31, 8) and messages[0].startswith("caching the reference's top-8 on")
    assert "cached the reference's top-8" in messages[1]

    rows = torch.tensor([3, 0, 3])
    picked = blocks.select(rows)
    positions = picked.attention_mask[:, 1:].clone()
    positions[1, 5:] = False
    index, logprob, tail = cached.lookup(rows, positions)
    with torch.no_grad():
        log_q = model(picked.input_ids, attention_mask=picked.attention_mask).logits[:, :-1]
    log_q = log_q.log_softmax(-1)[positions]
    expected_index, expected_values, expected_tail = targets_of(log_q, 8)
    assert index.dtype == torch.int32 and torch.equal(index.long(), expected_index)
    torch.testing.assert_close(logprob, expected_values, atol=2e-2, rtol=0)  # stored as float16
    torch.testing.assert_close(tail, expected_tail, atol=2e-2, rtol=0)
    torch.testing.assert_close(torch.cat([logprob, tail[:, None]], -1).logsumexp(-1), torch.zeros(len(tail)))

    again = load_or_build(reference, blocks, **build)
    assert again.path == cached.path and messages[2:] == [f"reusing the cached reference {cached.path.name}"]
    assert cache_key(tiny_model_dir, blocks, 16, torch.float32) != key
    tokenizer = load_tokenizer(str(tiny_model_dir))
    other_split = split_corpus(blocks.stores, seq_len=32, heldout_fraction=0.2, seed=0,
                               pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id).train
    assert cache_key(tiny_model_dir, other_split, 8, torch.float32) != key


def test_cached_run_tracks_the_exact_run(make_spec, corpora, tmp_path):
    data = tmp_path / "general.jsonl"
    shutil.copy(corpora["general"], data)
    exact = train(make_spec(general_data=[str(data)], max_steps=12, eval_every=12, save_every=12), tmp_path / "exact")
    out = tmp_path / "cached"
    spec = make_spec(general_data=[str(data)], max_steps=12, eval_every=12, save_every=12, reference="cached",
                     reference_top_k=32)
    cached = train(spec, out, [JsonlLogger(out)])
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert "reference=cached" in next(e["message"] for e in events if e["kind"] == "config")
    assert any(e["kind"] == "reference-cache" and "top-32" in e["message"] for e in events)
    points = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert points[1]["train/general_kl"] == pytest.approx(0.0, abs=1e-4)  # step 1: the model is the base
    # a random tiny model is near uniform, so top-32 of 320 tokens is a coarse picture of it: loose bounds here,
    # bench/step_cost.py measures the gap on the trained demo model
    assert cached.metrics["eval/domain_ppl"] == pytest.approx(exact.metrics["eval/domain_ppl"], rel=0.05)
    assert cached.metrics["eval/general_ppl"] == pytest.approx(exact.metrics["eval/general_ppl"], rel=0.1)
    assert cached.metrics["eval/general_kl"] == pytest.approx(exact.metrics["eval/general_kl"], rel=0.3)
    assert cached.metrics["eval/general_kl"] > 0  # evaluation still measures the exact KL to the base


def test_cached_reference_is_only_for_mol():
    with pytest.raises(ValueError, match="reference 'cached' only applies to method 'mol'"):
        JobSpec(base_model="m", domain_data=["d"], general_data=["g"], method="cpt", reference="cached")
