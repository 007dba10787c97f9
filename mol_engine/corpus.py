"""Token stores -> training and held-out blocks, read lazily: memory does not grow with the corpus.

A corpus (one or more files, each a :class:`~mol_engine.token_store.TokenStore`) is split by documents: a
seeded, stratified sample of ``heldout_fraction`` of them (one drawn from each equal stripe of the corpus, so
the sample spans it) is held out; the rest trains. Each split is a *virtual stream*: a list of spans of the
stores, concatenated. Block ``i`` is the window ``[i·T, (i+1)·T)`` of its stream, the last one right-padded;
shuffling permutes block indices only, and reading a block copies just its ``T`` tokens out of the memmaps.
Only the span table lives in RAM: one entry per held-out document (and one per gap between them).

A corpus of a single document is split the same way into ``seq_len`` pieces instead of documents.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .batches import Blocks, document_positions
from .data import DataError
from .spec import Packing
from .token_store import TokenStore


@dataclass(frozen=True)
class Spans:
    """Spans ``[start, start + length)`` of ``stores[store]``, in stream order; ``before[i]`` = tokens ahead."""

    store: np.ndarray  # int32 [P]
    start: np.ndarray  # int64 [P]
    length: np.ndarray  # int64 [P]

    @property
    def before(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.length)]).astype(np.int64)

    @property
    def n_tokens(self) -> int:
        return int(self.length.sum())


class TokenBlocks:
    """Blocks of ``seq_len`` tokens over a virtual stream of store spans, read on demand (a BlockSource)."""

    def __init__(self, stores: Sequence[TokenStore], spans: Spans, seq_len: int, *, pad_id: int, eos_id: int,
                 packing: Packing, fingerprint: str) -> None:
        self.stores, self.spans, self.seq_len = list(stores), spans, seq_len
        self.pad_id, self.eos_id, self.packing, self.fingerprint = pad_id, eos_id, packing, fingerprint
        self._before = spans.before
        self.n_tokens = int(self._before[-1])

    def __len__(self) -> int:
        return max(1, math.ceil(self.n_tokens / self.seq_len))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream."""
        first = int(np.searchsorted(self._before, start, side="right")) - 1
        parts, position = [], start
        for span in range(first, len(self.spans.length)):
            if position >= stop:
                break
            offset = position - int(self._before[span])
            take = min(int(self.spans.length[span]) - offset, stop - position)
            begin = int(self.spans.start[span]) + offset
            parts.append(self.stores[int(self.spans.store[span])].tokens[begin : begin + take])
            position += take
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def select(self, index: Tensor | Sequence[int]) -> Blocks:
        """Blocks ``index`` in memory (with per-document position ids under document packing)."""
        rows = torch.as_tensor(index, dtype=torch.long).tolist()
        ids = np.full((len(rows), self.seq_len), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), self.seq_len), dtype=bool)
        for row, block in enumerate(rows):
            if not 0 <= block < len(self):
                raise IndexError(f"block {block} out of range ({len(self)} blocks)")
            tokens = self.read(block * self.seq_len, min((block + 1) * self.seq_len, self.n_tokens))
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = True
        input_ids = torch.from_numpy(ids)
        positions = document_positions(input_ids, self.eos_id) if self.packing == "document" else None
        return Blocks(input_ids, torch.from_numpy(mask), positions)


@dataclass
class Corpus:
    """A tokenized corpus split into training blocks and held-out blocks."""

    train: TokenBlocks
    heldout: TokenBlocks
    n_documents: int
    n_tokens: int


def split_corpus(stores: Sequence[TokenStore], *, seq_len: int, heldout_fraction: float, seed: int, pad_id: int,
                 eos_id: int, packing: Packing = "concat") -> Corpus:
    """Training and held-out blocks of ``stores``, holding out a seeded, stratified sample of documents."""
    units = [_units(s, seq_len) for s in stores] if sum(s.n_documents for s in stores) == 1 else \
        [np.asarray(s.offsets) for s in stores]
    n_units = sum(len(u) - 1 for u in units)
    if n_units < 2:
        n_tokens = sum(s.n_tokens for s in stores)
        raise DataError(f"corpus too small: one document of {n_tokens} tokens gives a single block of {seq_len}; "
                        "add documents or lower seq_len")
    rng = np.random.default_rng(seed)
    n_heldout = min(n_units - 1, max(1, round(n_units * heldout_fraction)))
    stripes = np.arange(n_heldout + 1, dtype=np.int64) * n_units // n_heldout
    held = stripes[:-1] + (rng.random(n_heldout) * (stripes[1:] - stripes[:-1])).astype(np.int64)
    train, heldout = _spans(units, held)
    heldout = _take(heldout, rng.permutation(len(heldout.length)))  # evaluation reads a prefix: make it random
    base = hashlib.sha256(" ".join(s.key for s in stores).encode() +
                          f" T={seq_len} f={heldout_fraction} seed={seed} packing={packing}".encode())

    def make(spans: Spans, part: str) -> TokenBlocks:
        return TokenBlocks(stores, spans, seq_len, pad_id=pad_id, eos_id=eos_id, packing=packing,
                           fingerprint=hashlib.sha256(base.digest() + part.encode()).hexdigest()[:24])

    return Corpus(train=make(train, "train"), heldout=make(heldout, "heldout"),
                  n_documents=sum(s.n_documents for s in stores), n_tokens=sum(s.n_tokens for s in stores))


def _units(store: TokenStore, seq_len: int) -> np.ndarray:
    """Offsets of ``seq_len`` pieces of a one-document store (the units a one-document corpus is split in)."""
    return np.unique(np.append(np.arange(0, store.n_tokens, seq_len, dtype=np.int64), store.n_tokens))


def _spans(units: list[np.ndarray], held: np.ndarray) -> tuple[Spans, Spans]:
    """(training spans: the runs of units between held-out ones; held-out spans: one per held-out unit)."""
    train, heldout = [], []
    first = 0
    for store, offsets in enumerate(units):
        count = len(offsets) - 1
        local = held[(held >= first) & (held < first + count)] - first
        first += count
        run_starts = np.concatenate([[0], local + 1])
        run_ends = np.concatenate([local, [count]])
        keep = run_ends > run_starts
        train.append((store, offsets[run_starts[keep]], offsets[run_ends[keep]] - offsets[run_starts[keep]]))
        heldout.append((store, offsets[local], offsets[local + 1] - offsets[local]))
    return _concat(train), _concat(heldout)


def _concat(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> Spans:
    return Spans(store=np.concatenate([np.full(len(s), i, dtype=np.int32) for i, s, _ in parts]),
                 start=np.concatenate([s for _, s, _ in parts]).astype(np.int64),
                 length=np.concatenate([n for _, _, n in parts]).astype(np.int64))


def _take(spans: Spans, order: np.ndarray) -> Spans:
    return Spans(spans.store[order], spans.start[order], spans.length[order])
