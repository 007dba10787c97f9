"""The forgetting drill-down: which held-out general passages drifted most from the base, and where in the text.

At each evaluation after step 0, every held-out general block the evaluation reads (a passage of ``seq_len``
tokens) gets its KL to the base per target token, with the same kernels as ``eval/general_kl`` (so the
token-weighted mean over all passages is that figure). The event ``drift`` names the :data:`TOP_N` passages with
the highest mean KL (text truncated) and, for the first of them, the KL of every token over its text: a heat strip
of what the model is forgetting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batches import BlockSource
from .evaluate import _batches
from .losses import _kl_to, _log_softmax_
from .modeling import hidden_states, logits_head
from .reference import Reference
from .spec import KLDirection

TOP_N = 5
PASSAGE_CHARS = 300  # text of a listed passage in the event
STRIP_TOKENS = 256  # tokens of the heat strip: a longer passage shows its window with the most KL


@dataclass
class PassageKL:
    """One held-out block: its tokens, and each token's KL as a target (None: the first token, padding, and the
    first token of a document, which no loss predicts)."""

    index: int
    token_ids: list[int]
    token_kl: list[float | None]

    @property
    def kl(self) -> float:
        """Mean KL per target token: the token-weighted mean of :attr:`token_kl`."""
        values = [v for v in self.token_kl if v is not None]
        return sum(values) / max(len(values), 1)


@torch.no_grad()
def passage_kls(model: nn.Module, reference: Reference, blocks: BlockSource, *, batch_size: int, eos_id: int,
                chunk: int, kl_direction: KLDirection, device: torch.device) -> list[PassageKL]:
    """Each block's per-token KL to ``reference`` (the caller gathers an FSDP model and puts it in eval mode)."""
    passages: list[PassageKL] = []
    head = logits_head(model)
    for batch in _batches(blocks, batch_size, True, device):
        valid = batch.target_mask(eos_id)
        hidden = hidden_states(model, batch.input_ids, batch.attention_mask, batch.position_ids)[:, :-1]
        ref_hidden = reference.hidden(batch.input_ids, batch.attention_mask, batch.position_ids)[:, :-1]
        kl = torch.zeros(valid.shape, dtype=torch.float32, device=device)
        kl[valid] = _chunked_token_kl(hidden[valid], head, ref_hidden[valid], reference.head, kl_direction,
                                      chunk).float()  # bf16 under autocast on a GPU
        for ids, mask, row_kl, row_valid in zip(batch.input_ids, batch.attention_mask, kl, valid, strict=True):
            n = int(mask.sum())
            targets = [float(k) if v else None for k, v in zip(row_kl.tolist(), row_valid.tolist(), strict=True)]
            passages.append(PassageKL(len(passages), ids[:n].tolist(), [None, *targets][:n]))
    return passages


def _chunked_token_kl(hidden: Tensor, head, ref_hidden: Tensor, ref_head, direction: KLDirection,
                      chunk: int) -> Tensor:
    """The KL of each position [N], ``chunk`` positions' logits at a time (as losses.chunked_kl_sum sums them)."""
    parts = [_kl_to(head(hidden[s : s + chunk]), _log_softmax_(ref_head(ref_hidden[s : s + chunk])), direction)
             for s in range(0, hidden.shape[0], chunk)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def drift_event(step: int, passages: list[PassageKL], tokenizer) -> dict[str, Any]:
    """The ``drift`` event: the :data:`TOP_N` passages by KL and the heat strip of the first, sizes bounded."""
    top = sorted(passages, key=lambda p: p.kl, reverse=True)[:TOP_N]
    listed = [{"index": p.index, "kl": p.kl, "tokens": sum(v is not None for v in p.token_kl),
               "text": _truncate(tokenizer.decode(p.token_ids, skip_special_tokens=True), PASSAGE_CHARS)}
              for p in top]
    strip = heat_strip(top[0], tokenizer) if top else None
    shown = f"highest {top[0].kl:.4g} nats/token over {len(passages)} held-out general passages" if top else "none"
    return {"step": step, "kind": "drift", "message": f"forgetting drill-down at step {step}: {shown}",
            "passages": listed, "strip": strip}


def heat_strip(passage: PassageKL, tokenizer) -> dict[str, Any]:
    """The passage's tokens as decoded pieces, each with its KL (None where no loss predicts it); a passage over
    :data:`STRIP_TOKENS` tokens shows the window of that many with the largest KL sum."""
    start = _hottest_window(passage.token_kl, STRIP_TOKENS)
    ids, kls = passage.token_ids[start : start + STRIP_TOKENS], passage.token_kl[start : start + STRIP_TOKENS]
    pieces = [tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids]
    return {"index": passage.index, "start": start, "pieces": pieces, "kl": kls}


def _hottest_window(values: list[float | None], width: int) -> int:
    if len(values) <= width:
        return 0
    sums = torch.tensor([v or 0.0 for v in values], dtype=torch.float64).cumsum(0)
    window = sums[width - 1 :] - torch.cat([sums.new_zeros(1), sums[:-width]])
    return int(window.argmax())


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
