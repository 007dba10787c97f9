import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mol_engine.data import (
    Batch,
    DataError,
    MixedBatches,
    build_corpus,
    pack,
    read_documents,
    read_qa,
)

EOS, PAD = 1, 0


def test_reads_jsonl_txt_and_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "first doc"}\n\n{"text": "second doc", "id": 3}\n')
    (tmp_path / "b.txt").write_text("para one\nstill one\n\n  \npara two\n")
    pq.write_table(pa.table({"text": ["x y", "z"]}), tmp_path / "c.parquet")
    assert read_documents(tmp_path / "a.jsonl") == ["first doc", "second doc"]
    assert read_documents(tmp_path / "b.txt") == ["para one\nstill one", "para two"]
    assert read_documents(tmp_path / "c.parquet") == ["x y", "z"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"text": "broken"\n', "bad.jsonl, line 2: invalid JSON"),
        ("missing.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', "missing.jsonl, line 2: missing field 'text'"),
        ("number.jsonl", '{"text": 5}\n', "number.jsonl, line 1: field 'text' must be a string"),
        ("empty.jsonl", "\n\n", "empty.jsonl: no documents found (empty corpus)"),
        ("blank.txt", "   \n\n", "blank.txt: no documents found"),
        ("data.csv", "text\nhello\n", "unsupported file type '.csv'"),
    ],
)
def test_bad_corpus_names_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_documents(tmp_path / name)


def test_wrong_encoding_names_the_line(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\u00e9 ok\nline two\n".encode() + "na\u00efve\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt, line 3: not valid UTF-8"):
        read_documents(tmp_path / "latin.txt")


def test_parquet_without_text_column(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match="missing column 'text'"):
        read_documents(tmp_path / "p.parquet")


def test_missing_file():
    with pytest.raises(DataError, match="file not found"):
        read_documents("/nonexistent/corpus.jsonl")


def test_read_qa_and_its_errors(tmp_path):
    good = tmp_path / "qa.jsonl"
    good.write_text(json.dumps({"question": "2+2?", "answer": 4}) + "\n")
    assert read_qa(good)[0].answer == "4"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: missing field 'answer'"):
        read_qa(bad)


def test_pack_joins_documents_with_eos_and_pads_the_last_block():
    blocks = pack([[5, 6, 7], [8, 9]], seq_len=4, eos_id=EOS, pad_id=PAD)
    assert blocks.input_ids.tolist() == [[5, 6, 7, EOS], [8, 9, EOS, PAD]]
    assert blocks.attention_mask.tolist() == [[True] * 4, [True, True, True, False]]


def test_target_mask_excludes_padding_and_document_starts():
    blocks = pack([[5, 6], [7, 8, 9]], seq_len=8, eos_id=EOS, pad_id=PAD)
    batch = Batch(blocks.input_ids, blocks.attention_mask, torch.tensor([False]))
    # ids: 5 6 EOS 7 8 9 EOS PAD -> targets 6 EOS 7 8 9 EOS PAD; 7 follows EOS (new document), PAD is padding
    assert batch.target_mask(EOS).tolist() == [[True, True, False, True, True, True, False]]


class WordTokenizer:
    """Whitespace tokenizer with the call signature of a Hugging Face tokenizer."""

    def __call__(self, docs, add_special_tokens=False, verbose=True):
        return {"input_ids": [[10 + len(w) for w in d.split()] for d in docs]}


def test_heldout_split_is_seeded_and_disjoint():
    docs = [f"doc {i} " + "w " * i for i in range(40)]
    a = build_corpus(docs, WordTokenizer(), seq_len=16, heldout_fraction=0.1, seed=3, eos_id=EOS, pad_id=PAD)
    b = build_corpus(docs, WordTokenizer(), seq_len=16, heldout_fraction=0.1, seed=3, eos_id=EOS, pad_id=PAD)
    c = build_corpus(docs, WordTokenizer(), seq_len=16, heldout_fraction=0.1, seed=4, eos_id=EOS, pad_id=PAD)
    assert torch.equal(a.heldout.input_ids, b.heldout.input_ids)
    assert not torch.equal(a.heldout.input_ids, c.heldout.input_ids)
    held = int(a.heldout.attention_mask.sum())
    assert held + int(a.train.attention_mask.sum()) == a.n_tokens  # every token is in exactly one split
    assert 0 < held < a.n_tokens


def _blocks(n: int, value_offset: int):
    return pack([[value_offset + i] * 3 for i in range(n)], seq_len=4, eos_id=EOS, pad_id=PAD)


@pytest.mark.parametrize(("n_domain", "n_general"), [(2, 2), (3, 1), (1, 3)])
def test_every_batch_holds_the_ratio_and_flags_rows(n_domain, n_general):
    domain, general = _blocks(10, 100), _blocks(7, 200)
    stream = MixedBatches(domain, general, n_domain, n_general, seed=0)
    for _ in range(12):
        batch = stream.next_batch()
        assert batch.is_general.tolist() == [False] * n_domain + [True] * n_general
        first_tokens = batch.input_ids[:, 0]
        assert (first_tokens[:n_domain] < 200).all() and (first_tokens[n_domain:] >= 200).all()


def test_stream_covers_each_epoch_and_resumes_exactly():
    domain, general = _blocks(6, 100), _blocks(6, 200)
    stream = MixedBatches(domain, general, 2, 2, seed=5)
    seen = torch.cat([stream.next_batch().input_ids[:2, 0] for _ in range(3)])
    assert sorted(seen.tolist()) == list(range(100, 106))  # one epoch = a permutation of all blocks
    state = stream.state()
    expected = [stream.next_batch().input_ids for _ in range(4)]
    resumed = MixedBatches(domain, general, 2, 2, seed=5)
    resumed.load_state(state)
    assert all(torch.equal(resumed.next_batch().input_ids, e) for e in expected)


def test_ranks_take_disjoint_rows_of_the_global_batch():
    domain, general = _blocks(8, 100), _blocks(8, 200)
    ranks = [MixedBatches(domain, general, 2, 2, seed=0, rank=r, world_size=2) for r in range(2)]
    single = MixedBatches(domain, general, 4, 4, seed=0)
    a, b, whole = ranks[0].next_batch(), ranks[1].next_batch(), single.next_batch()
    assert torch.equal(torch.cat([a.input_ids[:2], b.input_ids[:2]]), whole.input_ids[:4])
    assert torch.equal(torch.cat([a.input_ids[2:], b.input_ids[2:]]), whole.input_ids[4:])
