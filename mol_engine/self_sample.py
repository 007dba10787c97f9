"""General text sampled from the base model itself, for users without a general corpus.

Sampling at temperature 1 (no top-k, no top-p) draws from exactly the distribution MoL anchors to, so the
KL term sees the base's own typical text. The trade-off: the samples only cover what the base already
generates unprompted; a real general corpus also anchors the model on text the base merely scores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .callbacks import Cancelled

PROGRESS_EVERY_S = 2.0

Progress = Callable[[dict], None]
ShouldStop = Callable[[], bool]


@torch.no_grad()
def sample_documents(model: nn.Module, tokenizer, n_tokens: int, *, max_len: int, seed: int,
                     device: torch.device, batch_size: int = 16, progress: Progress | None = None,
                     should_stop: ShouldStop | None = None) -> list[str]:
    """Documents sampled from ``model`` (starting from BOS, or EOS) until about ``n_tokens`` tokens.

    ``progress`` gets a point after the first batch and every ``PROGRESS_EVERY_S`` after; ``should_stop`` is
    asked after every batch and raises :class:`Cancelled` when it answers True.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    docs: list[str] = []
    total = 0
    was_training = model.training
    model.eval()
    started, reported = time.perf_counter(), float("-inf")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        while total < n_tokens:
            prompt = torch.full((batch_size, 1), start, dtype=torch.long, device=device)
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=max_len, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, 1:]
            total += int((new != tokenizer.pad_token_id).sum()) if tokenizer.pad_token_id is not None else new.numel()
            docs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True) if t.strip()]
            if progress is not None and time.perf_counter() - reported >= PROGRESS_EVERY_S:
                reported = time.perf_counter()
                progress(_progress_point(total, n_tokens, reported - started))
            if should_stop is not None and should_stop():
                raise Cancelled(f"cancelled while sampling general text ({total:,} of {n_tokens:,} tokens)")
    model.train(was_training)
    return docs


def _progress_point(total: int, n_tokens: int, seconds: float) -> dict:
    rate = total / max(seconds, 1e-9)
    eta = max(n_tokens - total, 0) / max(rate, 1e-9)
    return {"message": f"sampling general text from the base: {total:,} of {n_tokens:,} tokens, "
                       f"{rate:,.0f} tokens/s, ETA {eta:.0f}s",
            "tokens": total, "target_tokens": n_tokens, "tokens_per_s": round(rate), "eta_s": round(eta, 1),
            "fraction": round(min(total / n_tokens, 1.0), 4)}


def self_corpus_path(out_dir: Path) -> Path:
    """Where :func:`self_general_corpus` keeps the run's sampled general text."""
    return out_dir / "general_self.jsonl"


def self_general_corpus(out_dir: Path, model: nn.Module, tokenizer, n_tokens: int, *, max_len: int, seed: int,
                        device: torch.device, progress: Progress | None = None,
                        should_stop: ShouldStop | None = None) -> Path:
    """``out_dir/general_self.jsonl``, sampled once and reused (a resumed run sees the same text)."""
    path = self_corpus_path(out_dir)
    if not path.exists():
        docs = sample_documents(model, tokenizer, n_tokens, max_len=max_len, seed=seed, device=device,
                                progress=progress, should_stop=should_stop)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        tmp.rename(path)
    return path
