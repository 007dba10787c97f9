"""Corpus files in, documents and question/answer pairs out: read incrementally, with errors that name the line.

Nothing here imports torch: the API checks uploads with these same rules. Tokenizing and packing live in
:mod:`mol_engine.token_store` (documents -> tokens on disk) and :mod:`mol_engine.corpus` (tokens on disk ->
blocks, read lazily); mixing blocks into batches in :mod:`mol_engine.batches`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the line."""


class BadLines:
    """Bad lines gathered instead of raised, for a report of them all: the first ``cap`` messages are kept and
    the rest only counted, so memory stays bounded whatever the file."""

    def __init__(self, cap: int) -> None:
        self.cap, self.count, self.messages = cap, 0, []

    def add(self, err: DataError) -> None:
        self.count += 1
        if len(self.messages) < self.cap:
            self.messages.append(str(err))

    def error(self, last: DataError | None = None) -> DataError | None:
        """One DataError listing each kept line, then ``and N more bad lines`` past the cap, then ``last`` (an
        error about the whole file); None when there is nothing to report."""
        more = self.count - len(self.messages)
        lines = self.messages + ([f"and {more} more bad line{'s' if more > 1 else ''}"] if more else [])
        lines += [str(last)] if last is not None else []
        return DataError("\n".join(lines)) if lines else None


def _bad(bad: BadLines | None, err: DataError) -> None:
    """Raise ``err``, or note it in ``bad`` when bad lines are being gathered (the caller then skips the line)."""
    if bad is None:
        raise err
    bad.add(err)


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


# ---------------------------------------------------------------- reading files

CORPUS_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "txt", ".text": "txt",
                   ".md": "txt", ".parquet": "parquet"}
MAX_DOCUMENT_CHARS = 8 * 2**20  # a .txt paragraph longer than this is cut into documents at line ends


class DocumentReader:
    """The non-empty documents of a corpus file, read incrementally: memory stays bounded by one document.

    JSONL (a ``text`` field per line), .txt (blank-line separated) or Parquet (a ``text`` column).
    ``bytes_read`` and ``size`` report progress; errors name the file and the line (or row). With ``bad``, bad
    lines (or rows) are noted there and skipped instead of raised.
    """

    def __init__(self, path: str | Path, bad: BadLines | None = None) -> None:
        self.path, self.bad = Path(path), bad
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        self.kind = CORPUS_SUFFIXES.get(self.path.suffix.lower())
        if self.kind is None:
            raise DataError(f"{self.path}: unsupported file type '{self.path.suffix}' (use .jsonl, .txt or .parquet)")
        self.size = self.path.stat().st_size
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        self.bytes_read = 0
        found = False
        for doc in {"jsonl": self._jsonl, "txt": self._txt, "parquet": self._parquet}[self.kind]():
            doc = doc.strip()
            if doc:
                found = True
                yield doc
        if not found and not (self.bad and self.bad.count):
            raise DataError(f"{self.path}: no documents found (empty corpus)")

    def _lines(self) -> Iterator[tuple[int, str]]:
        with self.path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                self.bytes_read += len(raw)
                yield line_no, _decode_line(self.path, line_no, raw, self.bad)

    def _jsonl(self) -> Iterator[str]:
        for _, record in _records(self.path, self._lines(), ("text",), self.bad):
            yield record["text"]

    def _txt(self) -> Iterator[str]:
        lines: list[str] = []
        chars = 0
        for _, line in self._lines():
            if line is None:
                continue
            if not line.strip(" \t\r\n"):
                yield "".join(lines)
                lines, chars = [], 0
                continue
            lines.append(line.replace("\r\n", "\n"))
            chars += len(line)
            if chars > MAX_DOCUMENT_CHARS:
                yield "".join(lines)
                lines, chars = [], 0
        yield "".join(lines)

    def _parquet(self) -> Iterator[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise DataError(f"{self.path}: not a readable Parquet file ({err})") from None
        schema = parquet.schema_arrow
        if "text" not in schema.names:
            raise DataError(f"{self.path}: missing column 'text' (columns: {', '.join(schema.names)})")
        column_type = schema.field("text").type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise DataError(f"{self.path}: column 'text' must hold strings, got {column_type}")
        row, rows = 0, max(parquet.metadata.num_rows, 1)
        for batch in parquet.iter_batches(batch_size=8192, columns=["text"]):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is None:
                    _bad(self.bad, DataError(f"{self.path}, row {row - 1}: column 'text' is null"))
                    continue
                yield value
            self.bytes_read = self.size * row // rows


def iter_qa(path: str | Path, bad: BadLines | None = None) -> Iterator[QAPair]:
    """Question/answer pairs from a JSONL file with `question` and `answer` on every line, read incrementally
    (with ``bad``, bad lines are noted there and skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    found = False
    for line_no, record in _records(path, _file_lines(path, bad), ("question", "answer"), bad):
        if not str(record["answer"]).strip():
            _bad(bad, DataError(f"{path}, line {line_no}: field 'answer' is empty"))
            continue
        found = True
        yield QAPair(str(record["question"]), str(record["answer"]).strip())
    if not found and not (bad and bad.count):
        raise DataError(f"{path}: no question/answer pairs found (empty file)")


def read_qa(path: str | Path) -> list[QAPair]:
    """Every pair of ``iter_qa`` in memory (an evaluation set)."""
    return list(iter_qa(path))


def _file_lines(path: Path, bad: BadLines | None = None) -> Iterator[tuple[int, str | None]]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            yield line_no, _decode_line(path, line_no, raw, bad)


def _decode_line(path: Path, line_no: int, raw: bytes, bad: BadLines | None = None) -> str | None:
    """The line as text; None for a line that is not UTF-8 when ``bad`` gathers it."""
    try:
        return raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as err:
        _bad(bad, DataError(f"{path}, line {line_no}: not valid UTF-8 text ({err.reason})"))
        return None


def _records(path: Path, lines: Iterable[tuple[int, str | None]], fields: Sequence[str],
             bad: BadLines | None = None) -> Iterator[tuple[int, dict]]:
    """The JSON object of each non-blank line, checked to hold string ``fields`` (a number for an answer)."""
    for line_no, line in lines:
        if line is None or not line.strip():
            continue
        problem = _record_problem(line, fields)
        if isinstance(problem, str):
            _bad(bad, DataError(f"{path}, line {line_no}: {problem}"))
            continue
        yield line_no, problem


def _record_problem(line: str, fields: Sequence[str]) -> dict | str:
    """The line's JSON object, or what is wrong with it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return f"invalid JSON ({err.msg})"
    if not isinstance(record, dict):
        return "expected a JSON object"
    for field in fields:
        if field not in record:
            return f"missing field '{field}'"
        value = record[field]
        if field == "answer" and isinstance(value, int | float) and not isinstance(value, bool):
            continue
        if not isinstance(value, str):
            return f"field '{field}' must be a string"
    return record

