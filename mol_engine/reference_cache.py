"""The base model's next-token distribution on a general corpus, computed once and reused: top-k plus a tail.

For every target position of every training block of the general corpus the cache holds the base model's k
most likely next tokens, their log-probabilities, and the log-probability of all other tokens together (the
tail bucket), so that ``Σ_i q_i + q_tail = 1``. Training against it (``reference: cached`` in the spec)
compares the model with the base over these k+1 buckets (:func:`mol_engine.losses.token_topk_kl`) and skips
the reference forward pass of every step.

Layout, next to the first general data file, in ``<file>.mol-cache/topk-<key>/``: ``indices.npy``
[blocks, T-1, k] (uint16 when the vocabulary allows, else int32), ``logprobs.npy`` [blocks, T-1, k] float16,
``tail.npy`` [blocks, T-1] float32 and ``meta.json``. The key hashes the model (config and weight files),
the blocks' token ids, k and the compute dtype, so any change gives a new cache, and every job on the same
corpus and model reuses it. The directory appears by an atomic rename: a concurrent job never reads half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .callbacks import Cancelled
from .corpus import TokenBlocks
from .losses import TAIL_FLOOR
from .reference import Reference

# 2: keyed by the blocks' fingerprint; heads that apply every logit transform (Granite). 3: the base computes as the
# trained model does (full fine-tuning: float32 weights under autocast, no longer bf16 weights)
FORMAT = 3
PROGRESS_EVERY_S = 2.0


def cache_key(model_dir: str | Path, blocks: TokenBlocks, k: int, dtype: torch.dtype) -> str:
    """A digest of everything the cached distribution depends on."""
    digest = hashlib.sha256(f"format={FORMAT} k={k} dtype={dtype}".encode())
    model_dir = Path(model_dir)
    digest.update((model_dir / "config.json").read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(blocks.fingerprint.encode())  # the stores' content addresses, the split and the packing
    return digest.hexdigest()[:24]


class TopKTargets:
    """A built cache, memory-mapped: looks up the base's top-k targets of given blocks and positions."""

    kind = "cached-top-k"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        self.k = int(self.meta["k"])
        self.indices = np.load(path / "indices.npy", mmap_mode="r")
        self.logprobs = np.load(path / "logprobs.npy", mmap_mode="r")
        self.tail = np.load(path / "tail.npy", mmap_mode="r")

    def lookup(self, rows: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Targets at ``positions`` [G, T-1] (bool) of blocks ``rows`` [G], flattened in row-major order: host
        tensors in, host tensors out (the training loop looks them up with the next step's batch, in the background).

        Returns (token index [n, k] int32, log q [n, k] float32, log q_tail [n] float32), renormalised so
        each position's k+1 buckets sum to one exactly (the stored values are rounded to float16).
        """
        wanted = rows.numpy()
        picked = np.sort(wanted)  # sorted reads are sequential on disk; restore the order below
        order = torch.from_numpy(np.searchsorted(picked, wanted))
        index = torch.from_numpy(self.indices[picked].astype(np.int32))[order][positions]
        logprob = torch.from_numpy(self.logprobs[picked].astype(np.float32))[order][positions]
        tail = torch.from_numpy(np.asarray(self.tail[picked]))[order][positions]
        total = torch.logsumexp(torch.cat([logprob, tail[:, None]], dim=-1), dim=-1)
        return index, logprob - total[:, None], tail - total


def load_or_build(reference: Reference, blocks: TokenBlocks, *, root: Path, key: str, k: int, vocab_size: int,
                  device: torch.device, batch_size: int, chunk: int,
                  log: Callable[[str], None] = lambda message: None,
                  should_stop: Callable[[], bool] = lambda: False) -> TopKTargets:
    """The cache under ``root/topk-key``, computed with ``reference`` over ``blocks`` when it is not there yet.

    ``should_stop`` is asked between batches of a build: True raises Cancelled, and nothing is kept.
    """
    final = root / f"topk-{key}"
    if (final / "meta.json").is_file():
        log(f"reusing the cached reference {final.name}")
        return TopKTargets(final)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    started = time.perf_counter()
    log(f"caching the reference's top-{k} on {len(blocks)} general blocks")
    try:
        _compute(reference, blocks, scratch, k=k, vocab_size=vocab_size, device=device, batch_size=batch_size,
                 chunk=chunk, should_stop=should_stop, log=log)
        (scratch / "meta.json").write_text(json.dumps({
            "format": FORMAT, "k": k, "vocab_size": vocab_size, "blocks": len(blocks),
            "seq_len": blocks.seq_len, "seconds": round(time.perf_counter() - started, 2)}))
        try:
            os.rename(scratch, final)
        except OSError:  # another job finished the same cache first: use theirs
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"cached the reference's top-{k} on {len(blocks)} general blocks in {time.perf_counter() - started:.1f}s"
        f" ({_size(final) / 2**20:.1f} MiB, {final.name})")
    return TopKTargets(final)


@torch.no_grad()
def _compute(reference: Reference, blocks: TokenBlocks, dest: Path, *, k: int, vocab_size: int, device: torch.device,
             batch_size: int, chunk: int, should_stop: Callable[[], bool], log: Callable[[str], None]) -> None:
    if not 1 <= k < vocab_size:
        raise ValueError(f"reference_top_k: must be between 1 and the vocabulary size - 1 ({vocab_size - 1})")
    n, length = len(blocks), blocks.seq_len
    shape = (n, length - 1, k)
    index_dtype = np.uint16 if vocab_size <= 2**16 else np.int32
    indices = np.lib.format.open_memmap(dest / "indices.npy", mode="w+", dtype=index_dtype, shape=shape)
    logprobs = np.lib.format.open_memmap(dest / "logprobs.npy", mode="w+", dtype=np.float16, shape=shape)
    tails = np.lib.format.open_memmap(dest / "tail.npy", mode="w+", dtype=np.float32, shape=shape[:2])
    started = reported = time.perf_counter()
    for start in range(0, n, batch_size):
        if should_stop():
            raise Cancelled(f"cancelled while caching the reference ({start} of {n} general blocks)")
        if time.perf_counter() - reported >= PROGRESS_EVERY_S:
            reported = time.perf_counter()
            rate = start / max(reported - started, 1e-9)
            log(f"caching the reference: {start} of {n} general blocks, {rate:.1f} blocks/s, "
                f"ETA {(n - start) / max(rate, 1e-9):.0f}s")
        part = blocks.select(range(start, min(start + batch_size, n)))
        positions = part.position_ids.to(device) if part.position_ids is not None else None
        hidden = reference.hidden(part.input_ids.to(device), part.attention_mask.to(device), positions)[:, :-1]
        rows = hidden.shape[0]
        hidden = hidden.reshape(rows * (length - 1), -1)
        top_lp, top_ix, tail_lp = [], [], []
        for s in range(0, hidden.shape[0], chunk):
            log_q = F.log_softmax(reference.head(hidden[s : s + chunk]).float(), dim=-1)
            values, index = log_q.topk(k, dim=-1)
            top_lp.append(values)
            top_ix.append(index)
            tail_lp.append(torch.logsumexp(log_q.scatter(-1, index, float("-inf")), dim=-1).clamp_min(TAIL_FLOOR))
        end = start + rows
        indices[start:end] = torch.cat(top_ix).view(rows, length - 1, k).cpu().numpy().astype(index_dtype)
        logprobs[start:end] = torch.cat(top_lp).view(rows, length - 1, k).cpu().numpy().astype(np.float16)
        tails[start:end] = torch.cat(tail_lp).view(rows, length - 1).cpu().numpy()
    for array in (indices, logprobs, tails):
        array.flush()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())
