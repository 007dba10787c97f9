"""Why the token store is a raw numpy memmap: the same tokens as an Arrow IPC file (what HF ``datasets`` keeps on
disk and memory-maps), compared on bytes on disk and the time to read a random training window. (Writing
either costs little next to tokenizing, which is the same for both.)

Used by bench/data_scale.py; ``compare(store)`` returns the figures for its report.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from mol_engine.token_store import TokenStore


def write_arrow(store: TokenStore, path: Path, docs_per_batch: int = 4096) -> None:
    """The store's documents as an Arrow IPC file, one ``list<uint>`` row per document."""
    offsets = np.asarray(store.offsets)
    value_type = pa.from_numpy_dtype(store.tokens.dtype)
    schema = pa.schema([("input_ids", pa.list_(value_type))])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for first in range(0, store.n_documents, docs_per_batch):
            last = min(first + docs_per_batch, store.n_documents)
            begin = offsets[first]
            values = pa.array(np.asarray(store.tokens[begin : offsets[last]]), type=value_type)
            lists = pa.ListArray.from_arrays(pa.array(offsets[first : last + 1] - begin, type=pa.int32()), values)
            writer.write_batch(pa.record_batch([lists], schema=schema))


class ArrowWindows:
    """Token windows out of the memory-mapped Arrow file: the flattened values of each record batch."""

    def __init__(self, path: Path) -> None:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        self.chunks = [reader.get_batch(i).column(0).flatten() for i in range(reader.num_record_batches)]
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])

    def read(self, start: int, stop: int) -> np.ndarray:
        parts, position = [], start
        chunk = int(np.searchsorted(self.starts, start, side="right")) - 1
        while position < stop:
            offset = position - int(self.starts[chunk])
            take = min(len(self.chunks[chunk]) - offset, stop - position)
            parts.append(self.chunks[chunk].slice(offset, take).to_numpy(zero_copy_only=True))
            position, chunk = position + take, chunk + 1
        return np.concatenate(parts)


def compare(store: TokenStore, work: Path, seq_len: int = 256, reads: int = 20_000, seed: int = 0) -> dict:
    """numpy memmap vs Arrow IPC on the same tokens: bytes per token, µs to read a random training window."""
    arrow_file = work / "tokens.arrow"
    write_arrow(store, arrow_file)
    windows = np.random.default_rng(seed).integers(0, store.n_tokens - seq_len, reads)
    arrow = ArrowWindows(arrow_file)
    assert np.array_equal(arrow.read(int(windows[0]), int(windows[0]) + seq_len),
                          store.tokens[windows[0] : windows[0] + seq_len])
    timings = {}
    for name, read in (("numpy", lambda a: np.array(store.tokens[a : a + seq_len])),
                       ("arrow", lambda a: arrow.read(a, a + seq_len))):
        started = time.perf_counter()
        for a in windows.tolist():
            read(a)
        timings[name] = (time.perf_counter() - started) / reads * 1e6
    numpy_bytes = (store.path / "tokens.bin").stat().st_size + (store.path / "offsets.bin").stat().st_size
    return {"numpy_bytes_per_token": numpy_bytes / store.n_tokens,
            "arrow_bytes_per_token": arrow_file.stat().st_size / store.n_tokens,
            "numpy_window_us": timings["numpy"], "arrow_window_us": timings["arrow"]}
