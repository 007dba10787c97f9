"""Where the base model's next-token distribution comes from during training and evaluation.

- :class:`FrozenCopyReference` (full fine-tuning, MoL with the exact reference): the base loaded a second time,
  in the dtype the trained weights compute in (``train.reference_dtype``: float32 masters under autocast, with the
  matmul weights autocast would cast stored in bf16 already; bf16 where FSDP gathers in bf16), with the model's
  attention implementation, its layers compiled when the model's are, frozen, and run under the same autocast:
  the model's own numerics, so the KL is exactly 0 at step 0.
- :class:`AdapterDisabledReference` (LoRA): the trained model itself with its adapters switched off,
  so no second copy of the weights exists.
- :class:`OnDemandReference` (full fine-tuning runs that do not train against the base: ``cpt``,
  ``domain_only``, ``mol`` with ``reference: cached``): holds no weights; it loads the base when asked for a
  distribution (an evaluation, building the cache) and frees it at :meth:`~OnDemandReference.release`.
All run without autograd (``inference_mode``; ``no_grad`` for the adapter-disabled one) and return hidden
states; logits are formed chunk by chunk by the losses through :attr:`head`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from .modeling import ModelError, attention_of, causal_lm, compile_layers, hidden_states, load_model, logits_head

# (path, device, dtype, matmul_dtype, attention, compiled) -> the frozen base: load_whole, or a sharded loader
Loader = Callable[[str, torch.device, torch.dtype, "torch.dtype | None", "str | None", bool], nn.Module]


def load_whole(path: str, device: torch.device, dtype: torch.dtype, matmul_dtype: torch.dtype | None,
               attention: str | None, compiled: bool) -> nn.Module:
    """The base in ``path``, whole on ``device`` (``modeling.load_model``), its decoder layers compiled when
    ``compiled``."""
    model = load_model(path, device, dtype, matmul_dtype, attention=attention)
    return compile_layers(model) if compiled else model


class Reference(Protocol):
    """The frozen base distribution: ``hidden(ids, mask, positions)`` -> [B, T, H], and ``head`` hidden -> logits."""

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor: ...

    def head(self, hidden: Tensor) -> Tensor: ...


class FrozenCopyReference:
    """A frozen model of the base (loaded by :meth:`load`, in the trained weights' dtype), kept for the whole run."""

    kind = "frozen-copy"

    def __init__(self, model: nn.Module) -> None:
        self.model = causal_lm(model).eval().requires_grad_(False)
        self._head = logits_head(self.model)

    @classmethod
    def load(cls, path: str, device: torch.device, dtype: torch.dtype, matmul_dtype: torch.dtype | None = None,
             attention: str | None = None, compiled: bool = False,
             load: Loader | None = None) -> FrozenCopyReference:
        """The base model in ``path`` loaded by ``load`` on ``device`` directly in ``dtype`` (its matmul weights in
        ``matmul_dtype``, when given: ``modeling.store_matmul_weights``), with ``attn_implementation``
        ``attention``, its decoder layers compiled when ``compiled``, frozen. ``load`` is :func:`load_whole`
        (None), or under FSDP ``distributed.load_frozen_for_fsdp`` (each rank reads only its shards)."""
        return cls((load or load_whole)(path, device, dtype, matmul_dtype, attention, compiled))

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        with torch.inference_mode():
            out = hidden_states(self.model, input_ids, attention_mask, position_ids)
        return out.clone()  # a normal tensor, usable next to autograd tensors

    def head(self, hidden: Tensor) -> Tensor:
        with torch.no_grad():
            return self._head(hidden)


class OnDemandReference:
    """The base in ``path``, loaded (in ``dtype``, on ``device``) on first use and freed by :meth:`release`.

    Between uses it holds no weights. Each load reads the same files again (memory-mapped safetensors, usually
    from the page cache), so it gives the same distribution as a resident frozen copy; a base directory whose
    weight files changed since the run started is refused rather than silently measured against.
    """

    kind = "on-demand"

    def __init__(self, path: str, device: torch.device, dtype: torch.dtype, matmul_dtype: torch.dtype | None = None,
                 attention: str | None = None, compiled: bool = False) -> None:
        self.path, self.device, self.dtype, self.matmul_dtype = path, device, dtype, matmul_dtype
        self.attention, self.compiled = attention, compiled
        self._stamp = _files_stamp(path)
        self._loaded: FrozenCopyReference | None = None

    @property
    def resident(self) -> bool:
        """Whether the base's weights are loaded now."""
        return self._loaded is not None

    def _reference(self) -> FrozenCopyReference:
        if self._loaded is None:
            if _files_stamp(self.path) != self._stamp:
                raise ModelError(f"base_model: the files in {self.path} changed during the run; the KL to the base "
                                 f"would no longer measure against the model this run started from")
            self._loaded = FrozenCopyReference.load(self.path, self.device, self.dtype, self.matmul_dtype,
                                                    self.attention, self.compiled)
        return self._loaded

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        return self._reference().hidden(input_ids, attention_mask, position_ids)

    def head(self, hidden: Tensor) -> Tensor:
        return self._reference().head(hidden)

    def release(self) -> None:
        """Free the loaded weights now (and, on CUDA, the cached blocks they occupied)."""
        if self._loaded is None:
            return
        # Moving to "meta" frees every weight at once: the module itself sits in reference cycles that only a
        # full gc.collect() (about 0.2 s in a process that imported transformers) would free.
        self._loaded.model.to("meta")
        self._loaded = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _files_stamp(path: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of the model directory's config and weight files."""
    folder = Path(path)
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors"))]
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]


@contextlib.contextmanager
def released_after(reference: Reference | None) -> Iterator[Reference | None]:
    """``reference`` for the with-block; an on-demand one frees what it loaded when the block ends."""
    try:
        yield reference
    finally:
        if isinstance(reference, OnDemandReference):
            reference.release()


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
            # no_grad, not inference_mode: under FSDP these layers also train, and gathering their weights
            # inside inference_mode would make FSDP's reused all-gather buffers inference tensors
            with torch.no_grad(), self.model.disable_adapter():
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


def make_reference(model: nn.Module, *, lora: bool, resident: bool, path: str | None, device: torch.device,
                   dtype: torch.dtype, matmul_dtype: torch.dtype | None = None, compiled: bool = False,
                   load: Loader | None = None) -> Reference:
    """The cheapest exact reference: adapters disabled with LoRA when the anchor is the model's own base (``path``
    None); else a frozen copy loaded by ``load`` (:func:`load_whole` when None) from ``path`` in ``dtype`` (matmul
    weights in ``matmul_dtype``) when the run trains against it every step (``resident``), or an on-demand one that
    holds no weights between uses (loaded whole). A copy runs ``model``'s attention implementation, its layers
    compiled when ``compiled`` (as ``model``'s are): the model's numerics."""
    if lora and path is None:
        return AdapterDisabledReference(model)
    attention = attention_of(model)
    if resident:
        return FrozenCopyReference.load(path, device, dtype, matmul_dtype, attention, compiled, load)
    return OnDemandReference(path, device, dtype, matmul_dtype, attention, compiled)
