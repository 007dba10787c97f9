"""Text generation from a base model or a checkpoint: load it, complete a prompt, hand the text over as it comes.

One blocking function, :func:`generate`, runs ``transformers``' ``generate`` in the calling thread; it calls
``on_text`` with each piece of text as soon as it is final (a token, or a few when they only make a character
together) and stops early when ``cancelled`` is set (a client that went away) or a stop string appears. Callers
that must not block (the API's event loop) run it in a thread of their own.

A model to load is a Hugging Face directory, a LoRA adapter (loaded on its base with PEFT), or a training checkpoint
(``step-N``, its ``model/`` directory); an FSDP checkpoint's shards are gathered once into ``cache_dir`` first.
torch and transformers load with the first model (:func:`load_model`), not with this module.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import CONTEXT_FIELDS
from .export import ExportError, export_checkpoint, is_adapter, model_dir
from .run_dir import is_sharded_checkpoint
from .threads import use_threads


class GenerationError(ValueError):
    """The model cannot be loaded, or the request does not fit it; the message names what and why."""


@dataclass(frozen=True)
class ModelSource:
    """What to load: a model directory, a LoRA adapter or a checkpoint (``path``); ``base`` for an adapter."""

    path: Path
    base: Path | None = None


@dataclass
class LoadedModel:
    """A model ready to generate, its tokenizer, and its context length in tokens."""

    model: Any
    tokenizer: Any
    context: int


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: greedy when ``temperature`` is 0; ``stop`` strings end the text (not included)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    """The generated text and why it ended: ``stop`` (end of text or a stop string), ``length``, ``cancelled``."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def load_model(source: ModelSource, cache_dir: Path | None = None) -> LoadedModel:
    """The model at ``source`` in eval mode on the CPU, with its tokenizer; GenerationError when it cannot load."""
    from transformers import AutoModelForCausalLM

    use_threads()  # torch's threads by the machine's load, once per process, as training decides them
    try:
        directory = loadable_dir(source.path, cache_dir)
        if is_adapter(directory):
            model = _load_adapter(directory, source.base)
        else:
            model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
        tokenizer = _load_tokenizer(directory, source.base)
    except (OSError, ValueError, KeyError) as err:  # missing files, unknown architecture, bad config
        raise GenerationError(f"cannot load it: {err}") from None
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, context=context_length(model.config, tokenizer))


def loadable_dir(path: Path, cache_dir: Path | None) -> Path:
    """The Hugging Face directory of ``path``: itself, a checkpoint's ``model/``, or an FSDP checkpoint's shards
    gathered under ``cache_dir`` (once: later calls find them there)."""
    if not is_sharded_checkpoint(path):
        return model_dir(path)
    if cache_dir is None:
        raise GenerationError("an FSDP checkpoint needs a cache directory to gather its shards into")
    gathered = cache_dir / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    if not gathered.is_dir():
        try:
            export_checkpoint(path, gathered)
        except ExportError as err:
            raise GenerationError(str(err)) from None
    return gathered


def _load_adapter(directory: Path, base: Path | None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if base is None or not (base / "config.json").is_file():
        raise GenerationError(f"a LoRA adapter needs its base model, and '{base}' is not one")
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    return PeftModel.from_pretrained(model, directory, local_files_only=True)


def _load_tokenizer(directory: Path, base: Path | None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError):
        if base is None:
            raise
        return AutoTokenizer.from_pretrained(base, local_files_only=True)


def context_length(config, tokenizer) -> int:
    """The most tokens (prompt and completion) the model attends over."""
    for name in CONTEXT_FIELDS:
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return int(tokenizer.model_max_length)


def has_chat_template(loaded: LoadedModel) -> bool:
    return bool(getattr(loaded.tokenizer, "chat_template", None))


def chat_prompt(loaded: LoadedModel, messages: list[dict[str, str]]) -> str:
    """The prompt the tokenizer's chat template makes of ``messages``, ready for the assistant's turn."""
    if not has_chat_template(loaded):
        raise GenerationError("its tokenizer has no chat template: use /v1/completions with a plain prompt")
    return loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(loaded: LoadedModel, prompt: str, max_tokens: int) -> list[int]:
    """The prompt's token ids; GenerationError naming the lengths when prompt and completion exceed the context."""
    ids = loaded.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if len(ids) + max_tokens > loaded.context:
        raise GenerationError(
            f"the model's context is {loaded.context} tokens; the prompt has {len(ids)} and max_tokens asks for "
            f"{max_tokens} more ({len(ids) + max_tokens} in all): shorten the prompt or lower max_tokens")
    return ids


def generate(loaded: LoadedModel, prompt_ids: list[int], sampling: Sampling,
             on_text: Callable[[str], None] | None = None, cancelled: threading.Event | None = None) -> Completion:
    """The completion of ``prompt_ids``; each final piece of its text goes to ``on_text`` as it is made."""
    import torch
    from transformers import StoppingCriteriaList

    from .generate_hooks import Halt, TextPieces

    pieces = TextPieces(loaded.tokenizer, sampling.stop, on_text or (lambda _piece: None))
    cancelled = cancelled or threading.Event()
    halt = Halt(lambda: pieces.stopped or cancelled.is_set())
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    ids = torch.tensor([prompt_ids], device=loaded.model.device)  # a training model may be on a GPU
    with torch.inference_mode():
        loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=pieces,
                              stopping_criteria=StoppingCriteriaList([halt]), **_generate_options(loaded, sampling))
    if cancelled.is_set():
        reason = "cancelled"
    elif pieces.stopped or len(pieces.ids) < sampling.max_tokens:
        reason = "stop"
    else:
        reason = "length"
    return Completion(text=pieces.text, finish_reason=reason, prompt_tokens=len(prompt_ids),
                      completion_tokens=len(pieces.ids))


def _generate_options(loaded: LoadedModel, sampling: Sampling) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    options: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "pad_token_id": pad}
    if sampling.temperature > 0:
        return options | {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    return options | {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
