"""Corpora in, mixed batches out: read files, tokenize, pack into blocks, draw domain:general rows per step.

Every row of a batch carries its flag (``is_general``, the paper's "add-info"), which routes it to the
cross-entropy or the KL term. Positions are resumable: the batch stream is a pure function of the seed and
two counters, so a checkpoint stores the counters and nothing else.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


class DataError(ValueError):
    """Bad input data; the message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


# ---------------------------------------------------------------- reading files


def read_documents(path: str | Path) -> list[str]:
    """The non-empty documents of a corpus file: JSONL (`text` field), .txt (blank-line separated), Parquet."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        docs = [record["text"] for _, record in _jsonl_records(path, ("text",))]
    elif suffix in (".txt", ".text", ".md"):
        docs = re.split(r"\n[ \t]*\n", _read_utf8(path).replace("\r\n", "\n"))
    elif suffix == ".parquet":
        docs = _parquet_texts(path)
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .txt or .parquet)")
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{path}: no documents found (empty corpus)")
    return docs


def read_qa(path: str | Path) -> list[QAPair]:
    """Question/answer pairs from a JSONL file with `question` and `answer` on every line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    pairs = []
    for line_no, record in _jsonl_records(path, ("question", "answer")):
        if not str(record["answer"]).strip():
            raise DataError(f"{path}, line {line_no}: field 'answer' is empty")
        pairs.append(QAPair(str(record["question"]), str(record["answer"]).strip()))
    if not pairs:
        raise DataError(f"{path}: no question/answer pairs found (empty file)")
    return pairs


def _read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_no = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}, line {line_no}: not valid UTF-8 text ({err.reason})") from None


def _jsonl_records(path: Path, fields: Sequence[str]) -> list[tuple[int, dict]]:
    records = []
    for line_no, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {line_no}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {line_no}: expected a JSON object")
        for field in fields:
            if field not in record:
                raise DataError(f"{path}, line {line_no}: missing field '{field}'")
            value = record[field]
            if field == "answer" and isinstance(value, int | float) and not isinstance(value, bool):
                continue
            if not isinstance(value, str):
                raise DataError(f"{path}, line {line_no}: field '{field}' must be a string")
        records.append((line_no, record))
    return records


def _parquet_texts(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if "text" not in schema.names:
        raise DataError(f"{path}: missing column 'text' (columns: {', '.join(schema.names)})")
    column = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    for row, value in enumerate(column):
        if not isinstance(value, str):
            raise DataError(f"{path}, row {row}: column 'text' must hold strings, got {type(value).__name__}")
    return column


# ---------------------------------------------------------------- tokenizing and packing


@dataclass
class Blocks:
    """Packed token blocks of one corpus: ``input_ids`` and ``attention_mask``, both [n_blocks, seq_len]."""

    input_ids: Tensor
    attention_mask: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: Tensor | Sequence[int]) -> Blocks:
        index = torch.as_tensor(index, dtype=torch.long)
        return Blocks(self.input_ids[index], self.attention_mask[index])


@dataclass
class Corpus:
    """A tokenized corpus split into training blocks and held-out blocks."""

    train: Blocks
    heldout: Blocks
    n_documents: int
    n_tokens: int


def pack(token_docs: Sequence[Sequence[int]], seq_len: int, eos_id: int, pad_id: int) -> Blocks:
    """Documents joined with EOS after each, cut into ``seq_len`` blocks; the last one right-padded."""
    stream = [tok for doc in token_docs for tok in (*doc, eos_id)]
    n_blocks = max(1, math.ceil(len(stream) / seq_len))
    ids = torch.full((n_blocks * seq_len,), pad_id, dtype=torch.long)
    ids[: len(stream)] = torch.tensor(stream, dtype=torch.long)
    mask = torch.zeros(n_blocks * seq_len, dtype=torch.bool)
    mask[: len(stream)] = True
    return Blocks(ids.view(n_blocks, seq_len), mask.view(n_blocks, seq_len))


def tokenize(tokenizer, docs: Sequence[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens (EOS is added when packing)."""
    return tokenizer(list(docs), add_special_tokens=False, verbose=False)["input_ids"]


def build_corpus(
    docs: Sequence[str], tokenizer, seq_len: int, heldout_fraction: float, seed: int, eos_id: int, pad_id: int
) -> Corpus:
    """Tokenize and pack ``docs``, holding out a seeded fraction of documents (of blocks for one document)."""
    token_docs = tokenize(tokenizer, docs)
    n_tokens = sum(len(d) + 1 for d in token_docs)
    generator = torch.Generator().manual_seed(seed)
    if len(token_docs) >= 2:
        order = torch.randperm(len(token_docs), generator=generator).tolist()
        n_heldout = min(len(order) - 1, max(1, round(len(order) * heldout_fraction)))
        heldout = pack([token_docs[i] for i in sorted(order[:n_heldout])], seq_len, eos_id, pad_id)
        train = pack([token_docs[i] for i in sorted(order[n_heldout:])], seq_len, eos_id, pad_id)
    else:
        blocks = pack(token_docs, seq_len, eos_id, pad_id)
        if len(blocks) < 2:
            raise DataError(f"corpus too small: one document of {n_tokens} tokens gives a single block of "
                            f"{seq_len}; add documents or lower seq_len")
        order = torch.randperm(len(blocks), generator=generator)
        n_heldout = max(1, round(len(blocks) * heldout_fraction))
        heldout, train = blocks.select(order[:n_heldout].sort().values), blocks.select(order[n_heldout:].sort().values)
    return Corpus(train=train, heldout=heldout, n_documents=len(token_docs), n_tokens=n_tokens)


# ---------------------------------------------------------------- batches


@dataclass
class Batch:
    """One micro-batch. ``is_general[i]`` says which loss row i feeds; targets are ``input_ids[:, 1:]``."""

    input_ids: Tensor  # [B, T]
    attention_mask: Tensor  # [B, T]
    is_general: Tensor  # [B] bool
    general_rows: Tensor | None = None  # [G] the general corpus block of each general row (for cached targets)

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.is_general)),
                     self.general_rows)

    def target_mask(self, eos_id: int) -> Tensor:
        """[B, T-1] bool: the target at t+1 is a real token and not the first token of a new document."""
        return self.attention_mask[:, 1:] & (self.input_ids[:, :-1] != eos_id)

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


class RowStream:
    """Endless, seeded stream of block indices: a fresh permutation every epoch, resumable by position."""

    def __init__(self, n_blocks: int, seed: int) -> None:
        self.n_blocks, self.seed, self.position = n_blocks, seed, 0
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def take(self, count: int) -> list[int]:
        """The next ``count`` block indices."""
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.n_blocks)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.n_blocks, generator=generator)
            out.append(int(self._perm[offset]))
            self.position += 1
        return out


class MixedBatches:
    """Micro-batches of ``n_domain`` domain rows then ``n_general`` general rows, sharded across ranks."""

    def __init__(self, domain: Blocks, general: Blocks | None, n_domain: int, n_general: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if n_general and general is None:
            raise ValueError("n_general > 0 needs general blocks")
        self.domain, self.general = domain, general
        self.n_domain, self.n_general = n_domain, n_general
        self.rank, self.world_size = rank, world_size
        self.domain_stream = RowStream(len(domain), seed)
        self.general_stream = RowStream(len(general), seed + 1) if general is not None else None

    def next_batch(self) -> Batch:
        """The next micro-batch of this rank (all ranks advance the streams by the global batch)."""
        domain_rows = self._take(self.domain_stream, self.n_domain)
        parts = [self.domain.select(domain_rows)]
        general_rows = None
        if self.n_general:
            general_rows = torch.tensor(self._take(self.general_stream, self.n_general), dtype=torch.long)
            parts.append(self.general.select(general_rows))
        flags = torch.cat([torch.zeros(self.n_domain, dtype=torch.bool), torch.ones(self.n_general, dtype=torch.bool)])
        return Batch(torch.cat([p.input_ids for p in parts]), torch.cat([p.attention_mask for p in parts]), flags,
                     general_rows)

    def _take(self, stream: RowStream, per_rank: int) -> list[int]:
        rows = stream.take(per_rank * self.world_size)
        return rows[self.rank * per_rank : (self.rank + 1) * per_rank]

    def state(self) -> dict:
        """The stream position, enough to resume exactly here."""
        return {"domain": self.domain_stream.position,
                "general": self.general_stream.position if self.general_stream else 0}

    def load_state(self, state: dict) -> None:
        self.domain_stream.position = int(state["domain"])
        if self.general_stream:
            self.general_stream.position = int(state["general"])
