"""General text sampled from the base model itself, for users without a general corpus.

Sampling at temperature 1 (no top-k, no top-p) draws from exactly the distribution MoL anchors to, so the
KL term sees the base's own typical text. The trade-off: the samples only cover what the base already
generates unprompted; a real general corpus also anchors the model on text the base merely scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


@torch.no_grad()
def sample_documents(model: nn.Module, tokenizer, n_tokens: int, *, max_len: int, seed: int,
                     device: torch.device, batch_size: int = 16) -> list[str]:
    """Documents sampled from ``model`` (starting from BOS, or EOS) until about ``n_tokens`` tokens."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    docs: list[str] = []
    total = 0
    was_training = model.training
    model.eval()
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
    model.train(was_training)
    return docs


def self_general_corpus(out_dir: Path, model: nn.Module, tokenizer, n_tokens: int, *, max_len: int, seed: int,
                        device: torch.device) -> Path:
    """``out_dir/general_self.jsonl``, sampled once and reused (a resumed run sees the same text)."""
    path = out_dir / "general_self.jsonl"
    if not path.exists():
        docs = sample_documents(model, tokenizer, n_tokens, max_len=max_len, seed=seed, device=device)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        tmp.rename(path)
    return path
