"""Where the base model's next-token distribution comes from during training and evaluation.

- :class:`FrozenCopyReference` (full fine-tuning): a frozen copy of the base in the compute dtype.
- :class:`AdapterDisabledReference` (LoRA): the trained model itself with its adapters switched off,
  so no second copy of the weights exists.
Both run under ``torch.inference_mode()`` and return hidden states; logits are formed chunk by chunk by
the losses through :attr:`head`.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import Tensor, nn

from .modeling import causal_lm, hidden_states, logits_head


class Reference(Protocol):
    """The frozen base distribution: ``hidden(ids, mask, positions)`` -> [B, T, H], and ``head`` hidden -> logits."""

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor: ...

    def head(self, hidden: Tensor) -> Tensor: ...


class FrozenCopyReference:
    """A frozen copy of the base model, taken before training starts, in ``dtype``."""

    kind = "frozen-copy"

    def __init__(self, base: nn.Module, dtype: torch.dtype) -> None:
        self.model = copy.deepcopy(causal_lm(base)).to(dtype).eval().requires_grad_(False)
        self._head = logits_head(self.model)

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        with torch.inference_mode():
            out = hidden_states(self.model, input_ids, attention_mask, position_ids)
        return out.clone()  # a normal tensor, usable next to autograd tensors

    def head(self, hidden: Tensor) -> Tensor:
        with torch.no_grad():
            return self._head(hidden)


class AdapterDisabledReference:
    """The PEFT model with its adapters disabled: exactly the base model's outputs, no extra weights."""

    kind = "adapter-disabled"

    def __init__(self, peft_model: nn.Module) -> None:
        from peft.tuners.lora import LoraLayer

        self.model = peft_model
        lm_head = causal_lm(peft_model).get_output_embeddings()
        self._head_has_adapter = isinstance(lm_head, LoraLayer)
        self._head = logits_head(peft_model)

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        was_training = self.model.training
        self.model.eval()  # no dropout in the reference
        try:
            with torch.inference_mode(), self.model.disable_adapter():
                out = hidden_states(self.model, input_ids, attention_mask, position_ids)
        finally:
            self.model.train(was_training)
        return out.clone()

    def head(self, hidden: Tensor) -> Tensor:
        with torch.no_grad():
            if self._head_has_adapter:
                with self.model.disable_adapter():
                    return self._head(hidden)
            return self._head(hidden)


def make_reference(model: nn.Module, lora: bool, dtype: torch.dtype) -> Reference:
    """The cheapest exact reference for this model: adapters disabled with LoRA, else a frozen copy."""
    return AdapterDisabledReference(model) if lora else FrozenCopyReference(model, dtype)
