"""Held-out evaluation: domain and general perplexity, KL to the base on general text, QA exact match."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .batches import Batch, BlockSource
from .data import QAPair
from .objective import batch_losses
from .reference import Reference
from .spec import KLDirection


def _batches(blocks: BlockSource, batch_size: int, general: bool, device: torch.device) -> Iterator[Batch]:
    for start in range(0, len(blocks), batch_size):
        part = blocks.select(range(start, min(start + batch_size, len(blocks))))
        flags = torch.full((len(part),), general, dtype=torch.bool)
        yield Batch(part.input_ids, part.attention_mask, flags, position_ids=part.position_ids).to(device)


@torch.no_grad()
def heldout_metrics(model: nn.Module, *, domain: BlockSource, general: BlockSource | None, reference: Reference | None,
                    batch_size: int, eos_id: int, chunk: int, kl_direction: KLDirection,
                    device: torch.device) -> dict[str, float]:
    """``eval/domain_ppl`` and, with general text, ``eval/general_ppl`` and ``eval/general_kl`` (to the base)."""
    ce = n_ce = gce = n_gce = kl = n_kl = 0.0
    for batch in _batches(domain, batch_size, False, device):
        sums = batch_losses(model, batch, method="cpt", eos_id=eos_id, chunk=chunk)
        ce, n_ce = ce + float(sums.domain_ce), n_ce + sums.n_domain
    out = {"eval/domain_ppl": math.exp(ce / max(n_ce, 1))}
    if general is None:
        return out
    method = "eval" if reference is not None else "cpt"
    for batch in _batches(general, batch_size, True, device):
        sums = batch_losses(model, batch, method=method, eos_id=eos_id, chunk=chunk, reference=reference,
                            kl_direction=kl_direction)
        gce, n_gce = gce + float(sums.general_ce), n_gce + sums.n_general_ce
        kl, n_kl = kl + float(sums.general_kl), n_kl + sums.n_general_kl
    out["eval/general_ppl"] = math.exp(gce / max(n_gce, 1))
    if reference is not None:
        out["eval/general_kl"] = kl / max(n_kl, 1)
    return out


def normalize_answer(text: str) -> str:
    """Lower-cased, whitespace-collapsed, without surrounding punctuation or a trailing period."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.strip(" .,;:!?\"'")


@torch.no_grad()
def qa_exact_match(model: nn.Module, tokenizer, pairs: Sequence[QAPair], *, prompt: str, max_new_tokens: int,
                   device: torch.device, batch_size: int = 32) -> float:
    """Fraction of questions whose greedy answer (up to the first newline) equals the reference answer."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    correct = 0
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            enc = tokenizer([prompt.format(question=p.question) for p in chunk], return_tensors="pt",
                            padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += sum(normalize_answer(t.split("\n")[0]) == normalize_answer(p.answer)
                           for t, p in zip(texts, chunk, strict=True))
    finally:
        tokenizer.padding_side = side
    return correct / len(pairs)
