import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mol_engine.data import DataError, DocumentReader, read_qa


def read_documents(path) -> list[str]:
    """Every document of a small corpus file, as the engine's streaming reader yields them."""
    return list(DocumentReader(path))


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
