import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mol_engine.data import (
    Batch,
    Blocks,
    DataError,
    DocumentReader,
    MixedBatches,
    document_positions,
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


def test_target_mask_excludes_padding_and_document_starts():
    ids = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, PAD]])
    mask = torch.tensor([[True] * 7 + [False]])
    batch = Batch(ids, mask, torch.tensor([False]))
    # targets 6 EOS 7 8 9 EOS PAD; 7 follows EOS (new document), PAD is padding
    assert batch.target_mask(EOS).tolist() == [[True, True, False, True, True, True, False]]


def test_document_positions_restart_after_each_eos():
    ids = torch.tensor([[5, 6, EOS, 7, 8, EOS, 9, PAD], [4, EOS, EOS, 3, 3, 3, 3, 3]])
    assert document_positions(ids, EOS).tolist() == [[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 0, 0, 1, 2, 3, 4]]


def test_reader_streams_with_progress_and_names_a_late_broken_line(tmp_path):
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for i in range(20_000):
            handle.write(json.dumps({"text": f"document {i}"}) + "\n")
        handle.write('{"text": "broken\n')
    reader = DocumentReader(path)
    seen = 0
    with pytest.raises(DataError, match=r"big\.jsonl, line 20001: invalid JSON"):
        for _ in reader:
            seen += 1
    assert seen == 20_000 and reader.bytes_read == path.stat().st_size


def test_txt_paragraph_longer_than_the_cap_is_cut_at_line_ends(tmp_path, monkeypatch):
    import mol_engine.data as data

    monkeypatch.setattr(data, "MAX_DOCUMENT_CHARS", 25)
    (tmp_path / "long.txt").write_text("line one of it\nline two of it\nline three\n\nshort\n")
    assert read_documents(tmp_path / "long.txt") == ["line one of it\nline two of it", "line three", "short"]


def test_parquet_with_nulls_or_numbers_names_the_row_or_type(tmp_path):
    pq.write_table(pa.table({"text": ["ok", None]}), tmp_path / "nulls.parquet")
    with pytest.raises(DataError, match=r"nulls\.parquet, row 1: column 'text' is null"):
        read_documents(tmp_path / "nulls.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"column 'text' must hold strings, got int64"):
        read_documents(tmp_path / "ints.parquet")


def _blocks(n: int, value_offset: int) -> Blocks:
    """``n`` blocks of 4 tokens whose first token identifies them: value_offset + i."""
    ids = torch.tensor([[value_offset + i] * 3 + [EOS] for i in range(n)])
    return Blocks(ids, torch.ones_like(ids, dtype=torch.bool))


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
