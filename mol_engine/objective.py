"""Route each row of a batch to its loss term and return token sums and counts.

``mol``: domain rows -> CE, general rows -> KL to the reference.  ``cpt``: every row -> CE (general rows'
CE reported apart).  ``domain_only``: domain rows -> CE.  ``eval``: general rows -> CE and KL.
Sums (not means) are returned so that gradient accumulation can normalise by the whole step's token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .batches import Batch, TargetIndex, TopK
from .losses import chunked_ce_split, chunked_kl_sum, chunked_topk_kl_sum, mol_loss
from .modeling import hidden_states, logits_head
from .reference import Reference
from .reference_cache import TopKTargets
from .spec import KLDirection, Method


@dataclass
class TokenSums:
    """Loss sums over one micro-batch, and how many target tokens each covers (host ints: sizes of the host-built
    index). The CE sums are added before they are used, so ``domain_ce`` may carry ``general_ce``'s gradient too."""

    domain_ce: Tensor
    n_domain: int
    general_ce: Tensor
    n_general_ce: int
    general_kl: Tensor
    n_general_kl: int


# method -> (CE on general rows, KL on general rows); "eval" measures both on held-out text
ROUTES: dict[Method | Literal["eval"], tuple[bool, bool]] = {
    "mol": (False, True), "cpt": (True, False), "domain_only": (False, False), "eval": (True, True)}


def batch_losses(
    model: nn.Module,
    batch: Batch,
    *,
    method: str,
    eos_id: int,
    chunk: int,
    reference: Reference | None = None,
    cached: TopKTargets | None = None,
    kl_direction: KLDirection = "reverse",
) -> TokenSums:
    """Token sums of each loss term for ``batch`` (on the model's device) under ``method``.

    The KL term compares with ``cached`` top-k targets when given (``batch.topk``, else looked up by the batch's
    ``general_rows``), else with the ``reference`` model run on the general rows. Targets are gathered by the
    batch's :class:`TargetIndex` (built on the host, the counts are its sizes: nothing here reads the device when
    the batch carries it). Where CE covers every row (``cpt``, ``eval``) one pass over the head forms it: the
    general rows' share is split off detached, and ``domain_ce`` carries the gradient of both.
    """
    ce_on_general, kl_on_general = ROUTES[method]
    index = batch.target_index(eos_id)
    n_domain, n_general = len(index.domain), len(index.general)
    # what the KL compares with, prepared before the model's activations exist
    kl_targets = _kl_targets(batch, index, eos_id, reference, cached) if kl_on_general and n_general else None
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask, batch.position_ids).flatten(0, 1)  # [B*T, H]
    head = logits_head(model)
    targets = batch.input_ids.flatten()  # the target of flat position p is token p + 1
    zero = hidden.new_zeros((), dtype=torch.float32)
    # KL first: its chunk holds one more [positions, V] tensor than CE's, so it runs while fewer CE tensors are kept
    general_kl = zero
    if kl_targets is not None and cached is not None:
        general_kl = chunked_topk_kl_sum(hidden.index_select(0, index.general), head, *kl_targets, kl_direction, chunk)
    elif kl_targets is not None:
        general_kl = chunked_kl_sum(hidden.index_select(0, index.general), head, kl_targets, reference.head,
                                    kl_direction, chunk)
    ce_at = torch.cat([index.domain, index.general]) if ce_on_general else index.domain
    is_general = torch.arange(len(ce_at), device=ce_at.device) >= n_domain if ce_on_general else None
    domain_ce, general_ce = chunked_ce_split(hidden.index_select(0, ce_at), head, targets.index_select(0, ce_at + 1),
                                             is_general, chunk)
    return TokenSums(
        domain_ce=domain_ce - general_ce, n_domain=n_domain,
        general_ce=general_ce, n_general_ce=n_general if ce_on_general else 0,
        general_kl=general_kl, n_general_kl=n_general if kl_on_general else 0,
    )


def _kl_targets(batch: Batch, index: TargetIndex, eos_id: int, reference: Reference | None,
                cached: TopKTargets | None) -> Tensor | TopK:
    """What the general rows' KL compares with at their targets: cached top-k targets, or the reference's hidden
    states. A batch without ``topk`` looks them up now (reading its target mask back to the host)."""
    if cached is not None:
        if batch.topk is not None:
            return batch.topk
        valid = batch.target_mask(eos_id).index_select(0, index.general_rows).cpu()
        return tuple(t.to(batch.input_ids.device) for t in cached.lookup(batch.general_rows, valid))
    if reference is None:
        raise ValueError("the KL term needs a reference model")
    rows = index.general_rows
    positions = batch.position_ids.index_select(0, rows) if batch.position_ids is not None else None
    ref_hidden = reference.hidden(batch.input_ids.index_select(0, rows), batch.attention_mask.index_select(0, rows),
                                  positions)
    return ref_hidden.flatten(0, 1).index_select(0, index.general_local)


def objective(sums: TokenSums, n_ce_step: int, n_kl_step: int, kl_weight: float) -> Tensor:
    """This micro-batch's share of the step loss ``CE + λ·KL``, normalised by the step's token counts."""
    return mol_loss(sums.domain_ce + sums.general_ce, n_ce_step, sums.general_kl, n_kl_step, kl_weight)
