"""The Mixture-of-Losses objective as pure tensor functions.

Mixture of Losses (MoL) is the method of J. Chen, Q. Tang, Q. Lu and S. Fang, "MoL for LLMs: Dual-Loss
Optimization to Enhance Domain Expertise While Preserving General Capabilities", arXiv:2505.12043 (2025): each row
of a step is a domain row or a general row (a flag, the paper's "add-info"); domain rows are trained with
next-token cross-entropy, so the model learns the domain, and general rows with the KL divergence to the frozen
base model, so its general behaviour stays anchored to the base:

    L = L_CE(domain rows) + λ · KL(p_θ ‖ p_base)(general rows)

with λ the spec's ``kl_weight`` (1 by default) and the reverse KL by default (``kl_direction: forward`` takes
KL(p_base ‖ p_θ) instead). Written out, for one optimizer step whose rows are split into domain rows D and
general rows G:

    CE  = (1 / |T_D|) Σ_{t ∈ T_D} −log p_θ(x_t | x_<t)
    KL  = (1 / |T_G|) Σ_{t ∈ T_G} KL_t,   KL_t = Σ_v p_θ(v|x_<t) (log p_θ(v|x_<t) − log p_ref(v|x_<t))   (reverse)
                                     or   KL_t = Σ_v p_ref(v|x_<t) (log p_ref(v|x_<t) − log p_θ(v|x_<t)) (forward)
    loss = CE + λ · KL

where T_D and T_G are the valid target positions (no padding, no first token of a new document) of the
domain and general rows of the whole step: all its micro-batches (gradient accumulation) and all its processes.
Each term is a mean over its own tokens, so the domain:general row ratio sets how many tokens each mean rests on,
not how much each term weighs; only λ weighs them. The functions here return token sums; :func:`mol_loss` divides
them by the step's counts (:mod:`mol_engine.objective` routes the rows; the ``cpt`` baseline puts every row in
the CE mean and has no KL term). With a cached reference (:mod:`mol_engine.reference_cache`) KL_t is taken over k+1
buckets instead of the vocabulary: the base's top-k tokens at t and one tail bucket for all the others
(:func:`token_topk_kl`). Full-vocabulary logits are only ever formed for a chunk of positions at a time, and each
chunk's gradients (hidden states and head weights) are formed right away (:class:`_HeadChunks`), so memory does not
grow with positions × vocabulary and nothing is recomputed in backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from .spec import KLDirection

# hidden states [N, H] -> logits [N, V]; its trainable tensors are those its ``parameters()`` yields (an nn.Module,
# or modeling.LogitsHead): a plain function is taken to have none
Head = Callable[[Tensor], Tensor]

# fp32 logits per chunk when ``loss_chunk_tokens`` is not set: small on a CPU (caches), large on a GPU, where a
# chunk of a hundred positions leaves the head's matmul bound by reading the [V, H] weight (it is re-read per chunk)
CPU_CHUNK_BYTES = 64 * 2**20
CPU_CHUNK_POSITIONS = 512  # at most, on a CPU: CE over 2,048 positions at vocab 8,192 took 189 ms in chunks of 512,
# 229 ms in one chunk of 2,048 (the 64 MiB; its [N, V] tensors no longer fit a cache); large vocabularies stay by bytes
CUDA_CHUNK_BYTES = 2**30  # at most; and at most 1/64 of the device's memory


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token −log p(target), float32, shape [N], for logits [N, V] and targets [N].

    ``CE_t = −log softmax(z)_y``,  ``∂CE_t/∂z_v = p_v − 1[v = y]``. The gradient is formed in forward in the one
    float32 buffer log_softmax writes (:class:`_VocabCE`): bf16 logits are read once and upcast inside the kernel,
    never copied to float32 first.
    """
    return _VocabCE.apply(logits, targets)


def token_kl(logits: Tensor, ref_logits: Tensor, direction: KLDirection = "reverse") -> Tensor:
    """Per-token KL divergence over the vocabulary, float32, shape [N].

    ``reverse``: KL(p_θ ‖ p_ref) = Σ_v p_θ (log p_θ − log p_ref),  ∂/∂z_v = p_θ,v (log p_θ,v − log p_ref,v − KL);
    ``forward``: KL(p_ref ‖ p_θ) = Σ_v p_ref (log p_ref − log p_θ),  ∂/∂z_v = p_θ,v − p_ref,v.
    Gradients flow into ``logits`` only. The backward is written out (:class:`_VocabKL`), so a chunk keeps one
    [N, V] float32 tensor for it instead of the four or five that log_softmax + kl_div would keep.
    """
    with torch.no_grad():
        log_q = _log_softmax(ref_logits.detach())
    return _kl_to(logits, log_q, direction)


def _kl_to(logits: Tensor, log_q: Tensor, direction: KLDirection) -> Tensor:
    """:func:`token_kl` against reference log-probabilities ``log_q``, which it overwrites (a fresh tensor)."""
    _check_direction(direction)
    return _VocabKL.apply(logits, log_q, direction == "reverse")


def _check_direction(direction: str) -> None:
    """Refuse a KL direction that is not one of :data:`~mol_engine.spec.KLDirection`'s."""
    if direction not in get_args(KLDirection):
        raise ValueError(f"unknown KL direction {direction!r}")


def _log_softmax_(logits: Tensor) -> Tensor:
    """log_softmax over the last dimension, in place on a fresh float32 tensor (no second [N, V] copy).

    The same kernel as the model side of :class:`_VocabKL`, so the KL of a model to itself is exactly 0; the
    kernel's last pass is elementwise, so writing over its input is safe (and checked bit-exact in the tests).
    """
    if logits.dtype in (torch.float32, torch.float64):
        return torch.log_softmax(logits, dim=-1, out=logits)
    return _log_softmax(logits)  # half precision: the kernel writes a fresh float32 tensor


TAIL_FLOOR = -80.0  # log-probability floor of a cached reference's tail bucket (mol_engine/reference_cache.py)


def token_topk_kl(logits: Tensor, ref_index: Tensor, ref_logprob: Tensor, ref_tail: Tensor,
                  direction: KLDirection = "reverse") -> Tensor:
    """Per-token KL over k+1 buckets against a cached reference, float32, shape [N].

    The buckets are the reference's top-k tokens ``ref_index`` [N, k] (int32 or int64) and the tail (every other
    token):

        P_i = softmax(z)_{v_i},   P_tail = Σ_{v ∉ top-k} softmax(z)_v
        Q_i = exp(ref_logprob_i), Q_tail = exp(ref_tail),   Σ_i Q_i + Q_tail = 1
        reverse: Σ_b P_b (log P_b − log Q_b),  ∂/∂z_v = p_v (log P_b(v) − log Q_b(v) − KL)
        forward: Σ_b Q_b (log Q_b − log P_b),  ∂/∂z_v = p_v (1 − Q_b(v) / P_b(v)) = (p_v / P_b(v)) (P_b(v) − Q_b(v))

    where b(v) is the bucket of token v. Both sides are proper distributions over the same buckets, so this is a
    true KL (of the coarsened distributions: never above the full-vocabulary KL), unlike plain top-k truncation,
    which drops the tail and biases the targets. Gradients flow into ``logits``; backward keeps one [N, V] tensor.
    Every gradient is formed as (p_v / P_b(v)) times a bounded bucket factor, with p_v / P_b(v) = 1 for a top-k
    token and ≤ 1 for a tail token, so extreme logits (a bucket the model gives e^-300) give finite gradients; the
    tail's log-mass is a log-sum-exp, exact however small. Needs k < V (a tail of at least one token).
    """
    _check_direction(direction)
    if ref_index.shape[-1] >= logits.shape[-1]:
        raise ValueError(f"top-k of {ref_index.shape[-1]} leaves no tail in a vocabulary of {logits.shape[-1]}")
    log_q = torch.cat([ref_logprob, ref_tail[:, None]], dim=-1).to(torch.promote_types(logits.dtype, torch.float32))
    return _BucketKL.apply(logits, ref_index.long(), log_q, direction == "reverse")  # gather takes int64 only


def _log_softmax(logits: Tensor) -> Tensor:
    """log_softmax over the last dimension in float32 (float64 stays), upcast inside the kernel: bf16 logits are read
    as they are, with no float32 copy of them first."""
    return F.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


class _VocabCE(torch.autograd.Function):
    """Cross-entropy of softmax(logits) at ``targets`` (see token_cross_entropy); backward keeps one [N, V] tensor."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        ctx.dtype = logits.dtype
        log_p = _log_softmax(logits)
        loss = log_p.gather(-1, targets[:, None]).squeeze(-1).neg_()
        unit_grad = None
        if ctx.needs_input_grad[0]:  # p − onehot(y), in log p's buffer
            unit_grad = log_p.exp_()
            unit_grad[torch.arange(len(targets), device=targets.device), targets] -= 1
        ctx.save_for_backward(unit_grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None]:
        (unit_grad,) = ctx.saved_tensors
        return (unit_grad * grad_loss[:, None]).to(ctx.dtype), None


class _VocabKL(torch.autograd.Function):
    """KL between softmax(logits) and a fixed distribution ``log_q`` over the whole vocabulary (see token_kl).

    The gradient for a unit upstream gradient is formed in forward, in the buffers of log p and of ``log_q``
    (which is consumed), so forward holds at most three [N, V] tensors besides the logits (forward KL) or two
    (reverse KL), and backward keeps one.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, log_q: Tensor, reverse: bool) -> Tensor:
        ctx.dtype = logits.dtype
        want_grad = ctx.needs_input_grad[0]
        log_p = _log_softmax(logits)
        if reverse:  # KL = Σ p (log p − log q), unit gradient p (log p − log q − KL)
            diff = log_q.neg_().add_(log_p)
            p = log_p.exp_()
            kl = torch.linalg.vecdot(p, diff)
            unit_grad = diff.sub_(kl[:, None]).mul_(p) if want_grad else None
        else:  # KL = Σ q (log q − log p), unit gradient p − q
            q = log_q.exp()
            kl = torch.linalg.vecdot(q, log_q.sub_(log_p))
            unit_grad = log_p.exp_().sub_(q) if want_grad else None
        ctx.save_for_backward(unit_grad)
        return kl

    @staticmethod
    def backward(ctx, grad_kl: Tensor) -> tuple[Tensor, None, None]:
        (unit_grad,) = ctx.saved_tensors
        return (unit_grad * grad_kl[:, None]).to(ctx.dtype), None, None


class _BucketKL(torch.autograd.Function):
    """KL between softmax(logits) coarsened to k+1 buckets and ``log_q`` [N, k+1] (see token_topk_kl).

    One [N, V] buffer: log p, then the tail tokens' log p (the top-k set to −inf), then p_v / max tail p (0 on the
    top-k), then the unit gradient, which backward keeps.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, log_q: Tensor, reverse: bool) -> Tensor:
        ctx.dtype = logits.dtype
        buffer = _log_softmax(logits)
        log_top = buffer.gather(-1, index)
        peak = buffer.scatter_(-1, index, float("-inf")).amax(-1, keepdim=True)  # finite: the tail is not empty
        ratio = buffer.sub_(peak).exp_()  # p_v / peak on the tail, 0 on the top-k, never above 1
        mass = ratio.sum(-1)  # at least 1
        log_bucket = torch.cat([log_top, (peak[:, 0] + mass.log())[:, None]], dim=-1)
        bucket = log_bucket.exp()
        if reverse:
            kl = (bucket * (log_bucket - log_q)).sum(-1)
            factor = bucket * (log_bucket - log_q - kl[:, None])  # ∂KL/∂z_v = (p_v / P_b) · factor_b
        else:
            kl = (log_q.exp() * (log_q - log_bucket)).sum(-1)
            factor = bucket - log_q.exp()
        unit_grad = None
        if ctx.needs_input_grad[0]:  # the tail's p_v / P_tail = ratio / mass, in place; the top-k's is 1
            unit_grad = ratio.mul_((factor[:, -1] / mass)[:, None]).scatter_(-1, index, factor[:, :-1])
        ctx.save_for_backward(unit_grad)
        return kl

    @staticmethod
    def backward(ctx, grad_kl: Tensor) -> tuple[Tensor, None, None, None]:
        (unit_grad,) = ctx.saved_tensors
        return (unit_grad * grad_kl[:, None]).to(ctx.dtype), None, None, None


def mol_loss(ce_sum: Tensor, n_ce: float | Tensor, kl_sum: Tensor, n_kl: float | Tensor, kl_weight: float) -> Tensor:
    """``CE + λ·KL`` from token sums and counts (counts over the whole optimizer step: host numbers, or device
    tensors summed over ranks, which are never read); empty terms count 0."""
    return _per_token(ce_sum, n_ce) + kl_weight * _per_token(kl_sum, n_kl)


def _per_token(total: Tensor, count: float | Tensor) -> Tensor:
    if isinstance(count, Tensor):  # an empty term's sum is 0: dividing it by 1 keeps it 0
        return total / count.clamp_min(1).to(total.dtype)
    return total / count if count else total * 0.0


def chunk_size(vocab_size: int, chunk_tokens: int | None = None, device: torch.device | None = None) -> int:
    """Positions per chunk: ``chunk_tokens`` if given, else as many as fit :func:`chunk_bytes` of fp32 logits (on a
    CPU at most CPU_CHUNK_POSITIONS)."""
    if chunk_tokens:
        return chunk_tokens
    fit = max(1, chunk_bytes(device) // (4 * vocab_size))
    return fit if device is not None and device.type == "cuda" else min(fit, CPU_CHUNK_POSITIONS)


def chunk_bytes(device: torch.device | None) -> int:
    """The fp32 logits one loss chunk may hold on ``device``: CUDA_CHUNK_BYTES capped at 1/64 of a GPU's memory
    (1 GiB on an 80 GB H100: ~1,770 positions at a 151,936-word vocabulary), CPU_CHUNK_BYTES elsewhere."""
    if device is None or device.type != "cuda":
        return CPU_CHUNK_BYTES
    return min(CUDA_CHUNK_BYTES, torch.cuda.get_device_properties(device).total_memory // 64)


def chunked_ce_split(hidden: Tensor, head: Head, targets: Tensor, second: Tensor | None,
                     chunk: int) -> tuple[Tensor, Tensor]:
    """(Σ over positions of −log p(target), the part of it where ``second`` [N] bool holds), with logits formed
    ``chunk`` positions at a time (hidden [N, H]) in one pass over the head. The part is detached: it splits the
    total for reporting, and the total carries the gradient of both. ``second`` None (MoL, whose CE covers the
    domain rows alone): the part is zero and no chunk selects it."""
    part = hidden.new_zeros((), dtype=torch.float32)
    if second is None:
        def whole(h: Tensor, y: Tensor) -> Tensor:
            return token_cross_entropy(head(h), y).sum()

        return _sum_over_chunks(whole, chunk, hidden, targets, head=head), part

    def piece(h: Tensor, y: Tensor, in_part: Tensor) -> Tensor:
        losses = token_cross_entropy(head(h), y)
        part.add_(torch.where(in_part, losses.detach(), 0.0).sum())
        return losses.sum()

    return _sum_over_chunks(piece, chunk, hidden, targets, second, head=head), part


def chunked_kl_sum(hidden: Tensor, head: Head, ref_hidden: Tensor, ref_head: Head, direction: KLDirection,
                   chunk: int) -> Tensor:
    """Σ over positions of the per-token KL between ``head(hidden)`` and the reference, chunk by chunk."""
    def piece(h: Tensor, r: Tensor) -> Tensor:
        with torch.no_grad():
            log_q = _log_softmax_(ref_head(r))
        return _kl_to(head(h), log_q, direction).sum()

    return _sum_over_chunks(piece, chunk, hidden, ref_hidden, head=head)


def chunked_topk_kl_sum(hidden: Tensor, head: Head, ref_index: Tensor, ref_logprob: Tensor, ref_tail: Tensor,
                        direction: KLDirection, chunk: int) -> Tensor:
    """Σ over positions of :func:`token_topk_kl` against cached top-k targets, chunk by chunk."""
    def piece(h: Tensor, index: Tensor, logprob: Tensor, tail: Tensor) -> Tensor:
        return token_topk_kl(head(h), index, logprob, tail, direction).sum()

    return _sum_over_chunks(piece, chunk, hidden, ref_index, ref_logprob, ref_tail, head=head)


def _sum_over_chunks(piece: Callable[..., Tensor], chunk: int, first: Tensor, *rest: Tensor,
                     head: Head | None = None) -> Tensor:
    """Σ of ``piece`` over ``chunk``-position slices of ``first`` and the tensors aligned with it, float32.

    With gradients wanted (for ``first`` or for ``head``'s trainable parameters) it runs :class:`_HeadChunks`.
    """
    n = first.shape[0]
    if n == 0:
        return first.sum() * 0.0  # keeps the graph connected, so every parameter still gets a gradient
    slices = [[t[s : s + chunk] for t in (first, *rest)] for s in range(0, n, chunk)]
    params = head_parameters(head) if torch.is_grad_enabled() else []
    if not torch.is_grad_enabled() or not (first.requires_grad or params):
        return sum((piece(*parts) for parts in slices), start=first.new_zeros((), dtype=torch.float32))
    return _HeadChunks.apply(piece, chunk, rest, first, *params)


def head_parameters(head: Head | None) -> list[Tensor]:
    """The trainable tensors of ``head`` (what its ``parameters()`` yields with ``requires_grad``); [] for none."""
    found = getattr(head, "parameters", None)
    return [p for p in found() if p.requires_grad] if callable(found) else []


class _HeadChunks(torch.autograd.Function):
    """Σ of a loss ``piece`` over chunks of positions, each chunk's gradients formed in forward, once.

    ``piece(h, *rest)`` forms a chunk's logits through the head and returns its loss sum. For each chunk forward
    runs the piece and, at once, its backward (``torch.autograd.grad``) to the chunk's hidden states and the
    head's parameters; the chunk's logits are then freed. The hidden-state gradients fill one [N, H] tensor; the
    head's gradient of every chunk is added into a float32 buffer per parameter. Under autocast the bf16 head
    weight is cast once and shared by all chunks, so autograd would otherwise sum the chunks' gradients in that
    cast's bf16 buffer (hundreds of roundings at a large vocabulary); here each chunk's gradient is rounded once
    and summed in float32, and backward hands it over in the parameter's dtype (one more rounding for a bf16
    parameter, as FSDP's gathered ones are). For a tied model that is the embedding's gradient too.
    Returns the float32 sum; backward scales the stored gradients by its upstream gradient.
    """

    @staticmethod
    def forward(ctx, piece: Callable[..., Tensor], chunk: int, rest: tuple[Tensor, ...], hidden: Tensor,
                *params: Tensor) -> Tensor:
        want_hidden = ctx.needs_input_grad[3]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_params = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk].detach().requires_grad_(want_hidden)
            with torch.enable_grad():
                loss = piece(h, *(t[s : s + chunk] for t in rest))
            wrt = [h] if want_hidden else []
            grads = torch.autograd.grad(loss, [*wrt, *params], allow_unused=True) if loss.requires_grad \
                else [None] * (len(wrt) + len(params))
            if want_hidden:
                grad_hidden[s : s + chunk] = 0 if grads[0] is None else grads[0]
            for buffer, grad in zip(grad_params, grads[len(wrt):], strict=True):
                if grad is not None:
                    buffer.add_(grad)
            total += loss.detach()
        ctx.param_dtypes = [p.dtype for p in params]
        ctx.save_for_backward(grad_hidden, *grad_params)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        grad_hidden, *grad_params = ctx.saved_tensors
        scaled_hidden = None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype)
        scaled = [(g * grad_total).to(dtype) for g, dtype in zip(grad_params, ctx.param_dtypes, strict=True)]
        return None, None, None, scaled_hidden, *scaled
