"""A base model's context window, read from its ``config.json`` without loading the model, and the rule that a
job's ``seq_len`` fits in it: one rule, checked by ``mol train`` before any work and by the API at submit."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# where Hugging Face configs keep the most positions a model attends over (Llama, GPT-2, T5-likes, ChatGLM)
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def config_context(config: Mapping[str, Any]) -> tuple[str, int] | None:
    """(field, value) of the context a config dict states (a multimodal model's ``text_config`` when the top
    level names none), or None when it states none."""
    for scope in (config, config.get("text_config") or {}):
        for name in CONTEXT_FIELDS:
            value = scope.get(name) if isinstance(scope, Mapping) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return name, value
    return None


def model_context(model_dir: str | Path) -> tuple[str, int] | None:
    """:func:`config_context` of ``model_dir/config.json``; None when there is no readable one (a model still
    being built, or not a local directory: loading it reports that)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config_context(config) if isinstance(config, Mapping) else None


def seq_len_problem(seq_len: int, context: tuple[str, int] | None, model: str) -> str | None:
    """Why ``seq_len`` does not fit the context of base model ``model`` (the message names ``seq_len`` and the
    model's limit), or None when it fits or the model states no context."""
    if context is None or seq_len <= context[1]:
        return None
    field, limit = context
    return (f"seq_len: {seq_len} is longer than base model '{model}' attends over ({field} {limit} in its "
            f"config.json); use a seq_len of at most {limit}")
