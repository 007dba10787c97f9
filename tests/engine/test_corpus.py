"""Blocks over token stores: the held-out split, lazy windows, and document packing's exactness."""

import json

import numpy as np
import pytest
import torch

from mol_engine.batches import document_positions
from mol_engine.corpus import split_corpus
from mol_engine.data import DataError
from mol_engine.modeling import load_model, load_tokenizer
from mol_engine.token_store import open_or_build


@pytest.fixture
def stores(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    files = []
    for name, n in (("a.jsonl", 30), ("b.jsonl", 13)):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": f"the river {i} " + "stone " * (i % 7)}) + "\n" for i in range(n)))
        files.append(path)
    return tokenizer, [open_or_build(f, tokenizer) for f in files]


def corpus_of(stores, tokenizer, **kw):
    args = dict(seq_len=16, heldout_fraction=0.2, seed=3, pad_id=tokenizer.pad_token_id,
                eos_id=tokenizer.eos_token_id) | kw
    return split_corpus(stores, **args)


def all_tokens(blocks):
    picked = blocks.select(range(len(blocks)))
    return picked.input_ids[picked.attention_mask]


def documents_in(tokens: torch.Tensor, eos: int) -> list[tuple[int, ...]]:
    ends = (tokens == eos).nonzero().flatten().tolist()
    return [tuple(tokens[a + 1 : b + 1].tolist()) for a, b in zip([-1, *ends], ends, strict=False)]


def test_split_is_seeded_disjoint_and_covers_every_document_once(stores):
    tokenizer, found = stores
    a, b, c = corpus_of(found, tokenizer), corpus_of(found, tokenizer), corpus_of(found, tokenizer, seed=4)
    assert torch.equal(all_tokens(a.heldout), all_tokens(b.heldout))
    assert not torch.equal(all_tokens(a.heldout), all_tokens(c.heldout))
    eos = tokenizer.eos_token_id
    train, held = documents_in(all_tokens(a.train), eos), documents_in(all_tokens(a.heldout), eos)
    every = [tuple(s.document(i).tolist()) for s in found for i in range(s.n_documents)]
    assert sorted(train + held) == sorted(every)  # each document in exactly one split, whole
    assert len(held) == round(len(every) * 0.2) and a.n_tokens == sum(s.n_tokens for s in found)


def test_blocks_are_windows_of_the_stream_padded_at_the_end(stores):
    tokenizer, found = stores
    blocks = corpus_of(found, tokenizer).train
    stream = np.concatenate([found[s].tokens[a : a + n] for s, a, n in
                             zip(blocks.spans.store, blocks.spans.start, blocks.spans.length, strict=True)])
    picked = blocks.select([2, 0, len(blocks) - 1])
    assert picked.input_ids[0].tolist() == stream[32:48].tolist()
    assert picked.input_ids[1].tolist() == stream[:16].tolist()
    tail = len(stream) - (len(blocks) - 1) * 16
    assert picked.attention_mask[2].sum() == tail and (picked.input_ids[2, tail:] == tokenizer.pad_token_id).all()
    assert picked.position_ids is None  # concat packing: the model's own positions


def test_a_single_document_is_split_in_blocks(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    path = tmp_path / "one.txt"
    path.write_text("the river stone garden " * 60)
    store = open_or_build(path, tokenizer)
    corpus = corpus_of([store], tokenizer)
    assert len(corpus.heldout) >= 1 and corpus.train.n_tokens + corpus.heldout.n_tokens == store.n_tokens
    path.write_text("river")
    with pytest.raises(DataError, match="corpus too small"):
        corpus_of([open_or_build(path, tokenizer)], tokenizer)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_document_packing_gives_each_document_the_logits_it_has_alone(tiny_model_dir, stores, attention):
    tokenizer, found = stores
    model = load_model(str(tiny_model_dir), torch.device("cpu")).eval()
    model.config._attn_implementation = attention
    docs = [torch.from_numpy(found[0].document(i).astype(np.int64)) for i in (3, 4, 5)]
    row = torch.cat(docs)[None]
    positions = document_positions(row, tokenizer.eos_token_id)
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=positions).logits[0]
        alone = [model(input_ids=d[None]).logits[0] for d in docs]
        leaky = model(input_ids=row).logits[0]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[len(docs[0]) :], torch.cat(alone[1:]), atol=1e-3)  # concat attends across
