"""Token stores: documents as each tokenizer means them, reuse by content, damage detected, disk errors named."""

import errno
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import mol_engine.token_store as token_store
from mol_engine.corpus import split_corpus
from mol_engine.data import DataError
from mol_engine.token_store import DocumentPolicy, StoreError, cache_root, open_or_build, store_stats, verify

WORDS = "the river model light north stone garden window paper quiet music".split()


def word_tokenizer(specials: list[str], *, bos: str | None, eos: str, adds_bos: bool,
                   extra_words: int = 0) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer with the given special tokens, built here (no hub)."""
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + ["<unk>"] + [f"w{i}" for i in range(extra_words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(specials)
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, unk_token="<unk>")


SHAPES = {  # the three ways tokenizers mark documents
    "llama3": dict(specials=["<|begin_of_text|>", "<|end_of_text|>"], bos="<|begin_of_text|>",
                   eos="<|end_of_text|>", adds_bos=True),
    "qwen2": dict(specials=["<|endoftext|>", "<|im_start|>"], bos=None, eos="<|endoftext|>", adds_bos=False),
    "gpt2": dict(specials=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>", adds_bos=False),
}


def write_docs(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


DOCS = ["the river light", "north stone garden window", "paper", "quiet music the model <|endoftext|> river"]


@pytest.mark.parametrize("shape", SHAPES)
def test_documents_carry_the_tokenizers_own_bos_and_eos(tmp_path, shape):
    tokenizer = word_tokenizer(**SHAPES[shape])
    policy = DocumentPolicy.of(tokenizer)
    assert (policy.bos_id is not None) == (shape == "llama3")
    store = open_or_build(write_docs(tmp_path / "c.jsonl", DOCS), tokenizer)
    assert store.n_documents == len(DOCS) and store.tokens.dtype == np.uint16
    for i, text in enumerate(DOCS):
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        expected = ([policy.bos_id] if shape == "llama3" else []) + ids + [tokenizer.eos_token_id]
        assert store.document(i).tolist() == expected
    # a literal "<|endoftext|>" inside a text is text: EOS appears only at document ends
    assert int((store.tokens == tokenizer.eos_token_id).sum()) == len(DOCS)
    # packed blocks: the first token of every document (position 0 after an EOS) is BOS or the document's first word
    corpus = split_corpus([store], seq_len=6, heldout_fraction=0.3, seed=0, pad_id=0,
                          eos_id=tokenizer.eos_token_id, packing="document")
    blocks = corpus.train.select(range(len(corpus.train)))
    after_eos = (blocks.input_ids[:, :-1] == tokenizer.eos_token_id) & blocks.attention_mask[:, 1:]
    starts = blocks.input_ids[:, 1:][after_eos]
    allowed = {policy.bos_id} if shape == "llama3" else {store.document(i)[0].item() for i in range(len(DOCS))}
    assert len(starts) >= 1 and set(starts.tolist()) <= allowed
    assert (blocks.position_ids[:, 1:][after_eos] == 0).all()


def test_store_is_reused_rebuilt_when_damaged_and_new_for_new_content(tmp_path):
    tokenizer = word_tokenizer(**SHAPES["qwen2"])
    data = write_docs(tmp_path / "c.jsonl", DOCS)
    events = []
    first = open_or_build(data, tokenizer, events.append)
    assert events[-1]["done"] and events[-1]["tokens"] == first.n_tokens
    events.clear()
    again = open_or_build(data, tokenizer, events.append)
    assert again.path == first.path and events == []  # reused: no build
    # flip one byte: detected by checksum and rebuilt; truncate: detected by size
    before = np.array(first.tokens)
    tokens = first.path / "tokens.bin"
    raw = bytearray(tokens.read_bytes())
    raw[0] ^= 0xFF
    tokens.write_bytes(bytes(raw))
    assert "checksum" in verify(first.path)
    rebuilt = open_or_build(data, tokenizer, events.append)
    assert "damaged" in events[0]["message"] and np.array_equal(rebuilt.tokens, before)
    tokens.write_bytes(tokens.read_bytes()[:-2])
    assert "truncated" in verify(first.path)
    assert open_or_build(data, tokenizer).n_tokens == first.n_tokens
    # new content -> a new store beside the old one; both are listed in the stats
    write_docs(data, [*DOCS, "garden"])
    other = open_or_build(data, tokenizer)
    assert other.path != first.path and other.n_documents == len(DOCS) + 1
    assert sorted(s["documents"] for s in store_stats(data)) == [len(DOCS), len(DOCS) + 1]


def test_large_vocabulary_uses_uint32(tmp_path):
    tokenizer = word_tokenizer(**SHAPES["qwen2"], extra_words=70_000)
    store = open_or_build(write_docs(tmp_path / "c.jsonl", ["w69999 the w5"]), tokenizer)
    assert store.tokens.dtype == np.uint32 and store.document(0)[0] == tokenizer.convert_tokens_to_ids("w69999")


def test_full_disk_fails_the_store_with_a_clear_message_and_leaves_nothing(tmp_path, monkeypatch):
    tokenizer = word_tokenizer(**SHAPES["qwen2"])
    data = write_docs(tmp_path / "c.jsonl", DOCS)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(token_store, "_write_tokens", full)
    with pytest.raises(StoreError, match="disk full while writing the token store tokens-"):
        open_or_build(data, tokenizer)
    assert [p.name for p in cache_root(data).iterdir()] == ["sha256.json"]  # no store, no scratch directory


def test_bad_line_fails_before_any_store_exists(tmp_path):
    tokenizer = word_tokenizer(**SHAPES["qwen2"])
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"text": "the river"}) + "\n" + '{"text": broken}\n')
    with pytest.raises(DataError, match=r"c\.jsonl, line 2: invalid JSON"):
        open_or_build(data, tokenizer)
    assert not list(cache_root(data).glob("tokens-*")) and not list(cache_root(data).glob(".building-*"))


def test_progress_reports_tokens_rate_and_eta_while_building(tmp_path, monkeypatch):
    tokenizer = word_tokenizer(**SHAPES["qwen2"])
    data = write_docs(tmp_path / "c.jsonl", [" ".join(WORDS)] * 3000)
    monkeypatch.setattr(token_store, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(token_store, "BATCH_CHARS", 20_000)
    points = []
    store = open_or_build(data, tokenizer, points.append)
    running = [p for p in points if not p.get("done")]
    assert len(running) >= 3 and all(p["tokens_per_s"] > 0 and "ETA" in p["message"] for p in running)
    assert [p["tokens"] for p in running] == sorted(p["tokens"] for p in running)
    assert 0 < running[0]["fraction"] < running[-1]["fraction"] <= 1 and running[-1]["tokens"] <= store.n_tokens
