"""Route each row of a batch to its loss term and return token sums and counts.

``mol``: domain rows -> CE, general rows -> KL to the reference.  ``cpt``: every row -> CE (general rows'
CE reported apart).  ``domain_only``: domain rows -> CE.  ``eval``: general rows -> CE and KL.
Sums (not means) are returned so that gradient accumulation can normalise by the whole step's token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .batches import Batch
from .losses import KLDirection, chunked_ce_sum, chunked_kl_sum, chunked_topk_kl_sum, mol_loss
from .modeling import hidden_states, logits_head
from .reference import Reference
from .reference_cache import TopKTargets


@dataclass
class TokenSums:
    """Loss sums over one micro-batch, and how many target tokens each covers."""

    domain_ce: Tensor
    n_domain: int
    general_ce: Tensor
    n_general_ce: int
    general_kl: Tensor
    n_general_kl: int


# method -> (CE on general rows, KL on general rows); "eval" measures both on held-out text
ROUTES = {"mol": (False, True), "cpt": (True, False), "domain_only": (False, False), "eval": (True, True)}


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

    The KL term compares with ``cached`` top-k targets when given (the batch must carry ``general_rows``),
    else with the ``reference`` model run on the general rows.
    """
    ce_on_general, kl_on_general = ROUTES[method]
    valid = batch.target_mask(eos_id)
    rows = batch.is_general
    general_pos = valid & rows[:, None]
    n_general = int(general_pos.sum())
    kl_targets = None  # what the KL compares with, prepared before the model's activations exist
    if kl_on_general and n_general and cached is not None:
        kl_targets = cached.lookup(batch.general_rows, valid[rows], batch.input_ids.device)
    elif kl_on_general and n_general:
        if reference is None:
            raise ValueError(f"method '{method}' needs a reference model")
        positions = batch.position_ids[rows] if batch.position_ids is not None else None
        kl_targets = reference.hidden(batch.input_ids[rows], batch.attention_mask[rows], positions)[:, :-1][valid[rows]]

    hidden = hidden_states(model, batch.input_ids, batch.attention_mask, batch.position_ids)[:, :-1]
    head = logits_head(model)
    targets = batch.input_ids[:, 1:]
    domain_pos = valid & ~rows[:, None]
    zero = hidden.new_zeros((), dtype=torch.float32)
    # KL first: its chunk holds one more [positions, V] tensor than CE's, so it runs while fewer CE tensors are kept
    general_kl = zero
    if kl_targets is not None and cached is not None:
        general_kl = chunked_topk_kl_sum(hidden[general_pos], head, *kl_targets, kl_direction, chunk)
    elif kl_targets is not None:
        general_kl = chunked_kl_sum(hidden[general_pos], head, kl_targets, reference.head, kl_direction, chunk)
    domain_ce = chunked_ce_sum(hidden[domain_pos], head, targets[domain_pos], chunk)
    general_ce = chunked_ce_sum(hidden[general_pos], head, targets[general_pos], chunk) if ce_on_general else zero
    return TokenSums(
        domain_ce=domain_ce, n_domain=int(domain_pos.sum()),
        general_ce=general_ce, n_general_ce=n_general if ce_on_general else 0,
        general_kl=general_kl, n_general_kl=n_general if kl_on_general else 0,
    )


def objective(sums: TokenSums, n_ce_step: int, n_kl_step: int, kl_weight: float) -> Tensor:
    """This micro-batch's share of the step loss ``CE + λ·KL``, normalised by the step's token counts."""
    return mol_loss(sums.domain_ce + sums.general_ce, n_ce_step, sums.general_kl, n_kl_step, kl_weight)
