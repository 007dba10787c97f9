"""Load a local Hugging Face causal LM for training, and split it into body (hidden states) and head (logits).

Splitting lets the losses form full-vocabulary logits a chunk of positions at a time.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .spec import JobSpec


class ModelError(ValueError):
    """The base model cannot be used; the message says why."""


def pick_device(spec: JobSpec) -> torch.device:
    """The device named by the spec, or CUDA when available for ``auto``."""
    if spec.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device: '{spec.device}' requested but CUDA is not available")
    return device


def pick_dtype(spec: JobSpec, device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 on CUDA and fp32 on CPU for ``auto``, else as the spec says."""
    if spec.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[spec.precision]


def load_tokenizer(path: str):
    """The base model's tokenizer with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    _check_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise ModelError(f"base_model: the tokenizer in {path} has no EOS token, needed between documents")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM in ``path`` on ``device`` (weights in ``dtype``), local files only, no remote code."""
    from transformers import AutoModelForCausalLM

    _check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise ModelError(f"base_model: cannot load a causal LM from {path}: {err}") from None
    model.config.use_cache = False
    return model.to(device)


def _check_model_dir(path: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise ModelError(f"base_model: {path} is not a Hugging Face model directory (no config.json)")


def add_lora(model: nn.Module, spec: JobSpec) -> nn.Module:
    """``model`` wrapped with fresh LoRA adapters (PEFT); only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora.rank, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules, bias="none", task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ModelError(f"lora.target_modules: {err}") from None


def causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face ``*ForCausalLM`` inside ``model`` (unwrapping PEFT and DDP)."""
    inner = getattr(model, "module", model)  # DDP
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                  position_ids: Tensor | None = None) -> Tensor:
    """Last-layer hidden states [B, T, H] of the transformer body (LoRA layers included, when present).

    With ``position_ids`` (document packing) the model gets no attention mask: transformers then reads the
    document boundaries from where positions restart and keeps attention inside each document. Padding is
    only ever at the right end of a row, so causal attention never lets a real token see it.
    """
    body = causal_lm(model).get_decoder()
    if position_ids is not None:
        return body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    return body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def logits_head(model: nn.Module):
    """A function hidden [N, H] -> logits [N, V], as the model's own forward computes them."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    if head is None:
        raise ModelError("base_model: the model has no output embeddings (lm_head)")
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    scale = getattr(lm.config, "logit_scale", None) if hasattr(lm, "logit_scale") else None

    def apply(hidden: Tensor) -> Tensor:
        logits = head(hidden)
        if scale is not None:
            logits = logits * scale
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return apply


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
