"""Token stores: a corpus file tokenized once into a memory-mapped token array plus document offsets.

A store is keyed by (the file's sha256, the tokenizer's full definition, the document policy, the format), so
every job and every rank on the same file and tokenizer reads the same store, and any change builds a new one.
It lives next to the file, in ``<file>.mol-cache/tokens-<key>/`` (deleted with the dataset):

    tokens.bin    every document's tokens, back to back: uint16 when the vocabulary fits, else uint32
    offsets.bin   int64 [documents + 1]: where each document starts in tokens.bin, then the total
    meta.json     counts, dtype, policy, the tokenizer's name, build speed, and the sha256 of both files

A document is ``[BOS if the tokenizer adds one] + ids + [EOS]``. Special-token text inside a document (a
literal ``<|endoftext|>``) is encoded as text, so EOS marks document ends and nothing else. Stores are built
in one streaming pass (bounded memory whatever the file size, batched fast-tokenizer calls that use every core
through the tokenizer's own thread pool), written to a scratch directory and renamed into place: a store is
either complete or absent. Opening one checks sizes and checksums; a damaged store is deleted and rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .callbacks import Cancelled
from .data import DocumentReader

FORMAT = 1
PREFIX = "tokens-"
BATCH_CHARS = 2**20  # text per tokenizer call: large enough to keep every tokenizer thread busy
PROGRESS_EVERY_S = 2.0

Progress = Callable[[dict], None]
ShouldStop = Callable[[], bool]


class StoreError(RuntimeError):
    """A store could not be written (for example a full disk); the message says which and why."""


def cache_root(data_file: str | Path) -> Path:
    """Where everything derived from ``data_file`` lives (token stores, reference caches): deleted with it."""
    path = Path(data_file)
    return path.with_name(path.name + ".mol-cache")


@dataclass(frozen=True)
class DocumentPolicy:
    """How a document becomes tokens: ``[bos_id] + ids + [eos_id]`` (no BOS when ``bos_id`` is None)."""

    bos_id: int | None
    eos_id: int

    @classmethod
    def of(cls, tokenizer) -> DocumentPolicy:
        """The policy the tokenizer itself follows: BOS only if it adds one when asked for special tokens."""
        bos = tokenizer.bos_token_id
        adds_bos = False
        if bos is not None:
            with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
            plain = tokenizer("a", add_special_tokens=False)["input_ids"]
            adds_bos = with_special[:1] == [bos] and plain[:1] != [bos]
        return cls(bos if adds_bos else None, tokenizer.eos_token_id)


class Encoder:
    """Batch tokenizer: the fast tokenizer's Rust core (a private copy) when there is one, else the tokenizer."""

    def __init__(self, tokenizer) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.tokenizer = tokenizer
        self.rust = None
        if backend is not None:
            from tokenizers import Tokenizer

            self.rust = Tokenizer.from_str(backend.to_str())
            self.rust.encode_special_tokens = True  # "<|endoftext|>" in a text is text, not a document end
            self.rust.no_truncation()
            self.rust.no_padding()

    def __call__(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        if self.rust is not None:
            return [e.ids for e in self.rust.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def fingerprint(self) -> str:
        """A digest of the tokenizer's whole definition (vocabulary, merges, normalizer, added tokens)."""
        if self.rust is not None:
            text = self.rust.to_str()
        else:
            vocab = getattr(self.tokenizer, "get_vocab", dict)()
            text = type(self.tokenizer).__qualname__ + json.dumps(sorted(vocab.items()))
        return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The file's sha256, remembered beside it for its (size, mtime, inode) so a large file is hashed once."""
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    memo = cache_root(path) / "sha256.json"
    try:
        known = json.loads(memo.read_text())
        if {k: known.get(k) for k in stamp} == stamp:
            return known["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(memo, json.dumps(stamp | {"sha256": digest}))
    except OSError:
        pass  # a read-only dataset directory: hash again next time
    return digest


def store_key(data_sha256: str, encoder: Encoder, policy: DocumentPolicy) -> str:
    """The content address of the store for this file content, tokenizer and document policy."""
    parts = f"format={FORMAT} data={data_sha256} tokenizer={encoder.fingerprint()} bos={policy.bos_id} " \
            f"eos={policy.eos_id} special-text=split"
    return hashlib.sha256(parts.encode()).hexdigest()[:24]


class TokenStore:
    """An opened store: ``tokens`` and ``offsets`` memory-mapped (nothing is read until it is indexed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        self.key = path.name.removeprefix(PREFIX)
        self.n_tokens, self.n_documents = int(self.meta["tokens"]), int(self.meta["documents"])
        self.tokens = np.memmap(path / "tokens.bin", dtype=self.meta["dtype"], mode="r", shape=(self.n_tokens,))
        self.offsets = np.memmap(path / "offsets.bin", dtype=np.int64, mode="r", shape=(self.n_documents + 1,))

    def document(self, i: int) -> np.ndarray:
        """The tokens of document ``i`` (BOS and EOS included)."""
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]])


def verify(path: Path) -> str | None:
    """None when the store at ``path`` is complete and intact, else what is wrong with it."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            return f"format {meta.get('format')} (expected {FORMAT})"
        expected = {"tokens.bin": int(meta["tokens"]) * np.dtype(meta["dtype"]).itemsize,
                    "offsets.bin": (int(meta["documents"]) + 1) * 8}
        for name, size in expected.items():
            actual = (path / name).stat().st_size
            if actual != size:
                return f"{name} holds {actual} bytes, expected {size} (truncated)"
            with (path / name).open("rb") as handle:
                if hashlib.file_digest(handle, "sha256").hexdigest() != meta["sha256"][name]:
                    return f"{name} does not match its checksum (corrupt)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable ({err})"
    return None


def open_or_build(data_file: str | Path, tokenizer, progress: Progress | None = None,
                  should_stop: ShouldStop | None = None) -> TokenStore:
    """The store of ``data_file`` for ``tokenizer``: reused when complete and intact, else built (and checked).

    Raises DataError naming the file and line for bad input, StoreError when the store cannot be written, and
    Cancelled (keeping nothing) when ``should_stop``, asked between batches of a build, answers True.
    """
    data_file = Path(data_file)
    reader = DocumentReader(data_file)  # checks the file exists and has a corpus suffix
    encoder, policy = Encoder(tokenizer), DocumentPolicy.of(tokenizer)
    root = cache_root(data_file)
    final = root / f"{PREFIX}{store_key(file_sha256(data_file), encoder, policy)}"
    if final.is_dir():
        problem = verify(final)
        if problem is None:
            return TokenStore(final)
        _report(progress, {"message": f"token store {final.name} is damaged ({problem}): rebuilding"})
        shutil.rmtree(final, ignore_errors=True)
    _build(reader, encoder, policy, final, tokenizer, progress, should_stop)
    return TokenStore(final)


def _build(reader: DocumentReader, encoder: Encoder, policy: DocumentPolicy, final: Path, tokenizer,
           progress: Progress | None, should_stop: ShouldStop | None = None) -> None:
    vocab = max(len(tokenizer), (getattr(tokenizer, "vocab_size", 0) or 0))
    dtype = np.dtype(np.uint16 if vocab <= 2**16 else np.uint32)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    except OSError as err:
        raise _store_error(err, final) from None
    try:
        started = time.perf_counter()
        counts = _write_tokens(reader, encoder, policy, dtype, scratch, progress, should_stop)
        seconds = time.perf_counter() - started
        meta = {"format": FORMAT, "dtype": dtype.name, "tokens": counts[0], "documents": counts[1],
                "bos_id": policy.bos_id, "eos_id": policy.eos_id, "vocab_size": vocab,
                "tokenizer": Path(str(getattr(tokenizer, "name_or_path", "") or "tokenizer")).name,
                "source": reader.path.name, "source_bytes": reader.size, "seconds": round(seconds, 3),
                "tokens_per_s": round(counts[0] / max(seconds, 1e-9)),
                "sha256": {name: _sha256(scratch / name) for name in ("tokens.bin", "offsets.bin")}}
        (scratch / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(scratch, final)
        except OSError:  # another job finished the same store first: use theirs
            if verify(final) is not None:
                raise
    except OSError as err:
        raise _store_error(err, final) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _report(progress, {"message": f"token store {final.name}: {counts[0]:,} tokens in {counts[1]:,} documents of "
                                  f"{reader.path.name}, {seconds:.1f}s ({meta['tokens_per_s']:,} tokens/s)",
                       "tokens": counts[0], "documents": counts[1], "done": True})


def _write_tokens(reader: DocumentReader, encoder: Encoder, policy: DocumentPolicy, dtype: np.dtype, scratch: Path,
                  progress: Progress | None, should_stop: ShouldStop | None) -> tuple[int, int]:
    """Stream every document into ``tokens.bin`` and its start into ``offsets.bin``; (tokens, documents)."""
    n_tokens = n_docs = 0
    started = last = time.perf_counter()
    with (scratch / "tokens.bin").open("wb") as tokens_out, (scratch / "offsets.bin").open("wb") as offsets_out:
        for texts in _batches(reader, BATCH_CHARS):
            if should_stop is not None and should_stop():
                raise Cancelled(f"cancelled while tokenizing {reader.path.name} ({n_tokens:,} tokens so far)")
            tokens, lengths = documents_to_tokens(encoder(texts), policy, dtype)
            tokens.tofile(tokens_out)
            starts = n_tokens + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            starts.tofile(offsets_out)
            n_tokens, n_docs = n_tokens + len(tokens), n_docs + len(texts)
            now = time.perf_counter()
            if progress is not None and now - last >= PROGRESS_EVERY_S:
                last = now
                _report(progress, _progress_point(reader, n_tokens, n_docs, now - started))
        np.array([n_tokens], dtype=np.int64).tofile(offsets_out)
        for handle in (tokens_out, offsets_out):
            handle.flush()
            os.fsync(handle.fileno())
    return n_tokens, n_docs


def documents_to_tokens(ids: list[list[int]], policy: DocumentPolicy, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The documents' tokens back to back as ``[bos] + ids + [eos]`` each, and each document's length."""
    extra = 1 + (policy.bos_id is not None)
    lengths = np.fromiter((len(d) for d in ids), dtype=np.int64, count=len(ids)) + extra
    out = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    text_positions = np.ones(len(out), dtype=bool)
    text_positions[ends - 1] = False
    out[ends - 1] = policy.eos_id
    if policy.bos_id is not None:
        text_positions[ends - lengths] = False
        out[ends - lengths] = policy.bos_id
    out[text_positions] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(text_positions.sum()))
    return out, lengths


def _batches(docs: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _progress_point(reader: DocumentReader, tokens: int, docs: int, seconds: float) -> dict:
    fraction = reader.bytes_read / max(reader.size, 1)
    rate = tokens / max(seconds, 1e-9)
    eta = seconds * (1 - fraction) / fraction if fraction > 0 else None
    eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
    return {"message": f"tokenizing {reader.path.name}: {tokens:,} tokens, {rate:,.0f} tokens/s, "
                       f"{100 * fraction:.1f}%{eta_text}",
            "tokens": tokens, "documents": docs, "tokens_per_s": round(rate), "fraction": round(fraction, 4),
            "eta_s": round(eta, 1) if eta is not None else None, "file": reader.path.name}


def _report(progress: Progress | None, point: dict) -> None:
    if progress is not None:
        progress(point)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _store_error(err: OSError, final: Path) -> StoreError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"disk full while writing the token store {final.name} in {final.parent}: free space "
                          f"there and run the job again (nothing half-written is kept)")
    return StoreError(f"cannot write the token store {final.name} in {final.parent}: {err}")


def store_stats(data_file: str | Path) -> list[dict]:
    """What is known of ``data_file``'s token stores: one entry per tokenizer (tokens, documents, dtype)."""
    stats = []
    for meta_file in sorted(cache_root(data_file).glob(f"{PREFIX}*/meta.json")):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        stats.append({key: meta.get(key) for key in ("tokenizer", "tokens", "documents", "dtype", "vocab_size")}
                     | {"bytes": sum(f.stat().st_size for f in meta_file.parent.iterdir())})
    return stats
