"""The Mixture-of-Losses objective as pure tensor functions.

For a step whose rows are split into domain rows D and general rows G (a flag per row):

    CE  = (1 / |T_D|) Σ_{t ∈ T_D} −log p_θ(x_t | x_<t)
    KL  = (1 / |T_G|) Σ_{t ∈ T_G} KL_t,   KL_t = Σ_v p_θ(v|x_<t) (log p_θ(v|x_<t) − log p_ref(v|x_<t))   (reverse)
                                     or   KL_t = Σ_v p_ref(v|x_<t) (log p_ref(v|x_<t) − log p_θ(v|x_<t)) (forward)
    loss = CE + λ · KL

where T_D and T_G are the valid target positions (no padding, no first token of a new document) of the
domain and general rows. Full-vocabulary logits are only ever formed for a chunk of positions at a time
(and recomputed in backward) so memory does not grow with positions × vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

KLDirection = Literal["reverse", "forward"]
Head = Callable[[Tensor], Tensor]  # hidden states [N, H] -> logits [N, V]

DEFAULT_CHUNK_BYTES = 64 * 2**20  # fp32 logits per chunk


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token −log p(target), float32, shape [N], for logits [N, V] and targets [N]."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def token_kl(logits: Tensor, ref_logits: Tensor, direction: KLDirection = "reverse") -> Tensor:
    """Per-token KL divergence over the vocabulary, float32, shape [N].

    ``reverse``: KL(p_θ ‖ p_ref) = Σ_v p_θ (log p_θ − log p_ref);
    ``forward``: KL(p_ref ‖ p_θ) = Σ_v p_ref (log p_ref − log p_θ).
    Gradients flow into ``logits`` only.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_q = F.log_softmax(ref_logits.detach().float(), dim=-1)
    if direction == "reverse":
        return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    if direction == "forward":
        return F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    raise ValueError(f"unknown KL direction {direction!r}")


def mol_loss(ce_sum: Tensor, n_ce: int, kl_sum: Tensor, n_kl: int, kl_weight: float) -> Tensor:
    """``CE + λ·KL`` from token sums and counts (counts over the whole optimizer step); empty terms count 0."""
    ce = ce_sum / n_ce if n_ce else ce_sum * 0.0
    kl = kl_sum / n_kl if n_kl else kl_sum * 0.0
    return ce + kl_weight * kl


def chunk_size(vocab_size: int, chunk_tokens: int | None = None) -> int:
    """Positions per chunk: ``chunk_tokens`` if given, else as many as fit DEFAULT_CHUNK_BYTES of fp32 logits."""
    return chunk_tokens or max(1, DEFAULT_CHUNK_BYTES // (4 * vocab_size))


def chunked_ce_sum(hidden: Tensor, head: Head, targets: Tensor, chunk: int) -> Tensor:
    """Σ over positions of −log p(target), with logits formed ``chunk`` positions at a time. hidden [N, H]."""
    def piece(h: Tensor, y: Tensor) -> Tensor:
        return token_cross_entropy(head(h), y).sum()

    return _sum_over_chunks(piece, chunk, hidden, targets)


def chunked_kl_sum(hidden: Tensor, head: Head, ref_hidden: Tensor, ref_head: Head, direction: KLDirection,
                   chunk: int) -> Tensor:
    """Σ over positions of the per-token KL between ``head(hidden)`` and the reference, chunk by chunk."""
    def piece(h: Tensor, r: Tensor) -> Tensor:
        with torch.no_grad():
            ref_logits = ref_head(r)
        return token_kl(head(h), ref_logits, direction).sum()

    return _sum_over_chunks(piece, chunk, hidden, ref_hidden)


def _sum_over_chunks(piece: Callable[..., Tensor], chunk: int, first: Tensor, second: Tensor) -> Tensor:
    n = first.shape[0]
    if n == 0:
        return first.sum() * 0.0  # keeps the graph connected, so every parameter still gets a gradient
    if n <= chunk or not torch.is_grad_enabled():
        return sum((piece(first[s : s + chunk], second[s : s + chunk]) for s in range(0, n, chunk)),
                   start=first.new_zeros((), dtype=torch.float32))
    total = first.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk):
        # Recompute this chunk's logits in backward instead of keeping [chunk, V] alive per chunk.
        total = total + checkpoint(piece, first[s : s + chunk], second[s : s + chunk], use_reentrant=False)
    return total
