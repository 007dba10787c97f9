"""The demo's base model before pretraining: a tiny Llama initialised from the seed, written with its tokenizer as
the Hugging Face directory that pretraining (:mod:`.pretrain`) starts from and trains in place."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .tokenizer import save_tokenizer

if TYPE_CHECKING:  # torch and transformers load only when a build runs: a reused build needs neither
    from transformers import LlamaConfig, PreTrainedTokenizerFast


def tiny_llama_config(
    vocab_size: int,
    *,
    bos_token_id: int = 0,
    eos_token_id: int = 0,
    pad_token_id: int | None = 1,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 352,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = True,
) -> LlamaConfig:
    """A small Llama config (about 1.1M parameters at the defaults and a 2048 vocabulary, embeddings tied)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        attention_dropout=0.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def write_initial_model(tokenizer: PreTrainedTokenizerFast, directory: Path, seed: int) -> int:
    """Writes a :func:`tiny_llama_config` Llama for ``tokenizer``, its weights drawn from ``seed`` (the global RNG
    left as it was), and the tokenizer into ``directory``; returns its parameter count."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    save_tokenizer(tokenizer, directory)
    return sum(p.numel() for p in model.parameters())
