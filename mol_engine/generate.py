"""Text generation from a base model or a checkpoint: load it, complete a prompt, hand the text over as it comes.

One blocking function, :func:`generate`, runs ``transformers``' ``generate`` in the calling thread; it calls
``on_text`` with each piece of text as soon as it is final (a token, or a few when they only make a character
together) and stops early when ``cancelled`` is set (a client that went away) or a stop string appears. Callers
that must not block (the API's event loop) run it in a thread of their own.

A model to load is a Hugging Face directory, a LoRA adapter (loaded on its base with PEFT), or a training checkpoint
(``step-N``, its ``model/`` directory); an FSDP checkpoint's shards are gathered once into ``cache_dir`` first.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .checkpoint import is_sharded_checkpoint
from .export import ExportError, export_checkpoint, is_adapter, model_dir
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

    if base is None or not (base / "config.json").is_file():
        raise GenerationError(f"a LoRA adapter needs its base model, and '{base}' is not one")
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    return PeftModel.from_pretrained(model, directory, local_files_only=True)


def _load_tokenizer(directory: Path, base: Path | None):
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError):
        if base is None:
            raise
        return AutoTokenizer.from_pretrained(base, local_files_only=True)


def context_length(config, tokenizer) -> int:
    """The most tokens (prompt and completion) the model attends over."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
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
    pieces = _TextPieces(loaded.tokenizer, sampling.stop, on_text or (lambda _piece: None))
    cancelled = cancelled or threading.Event()
    halt = _Halt(lambda: pieces.stopped or cancelled.is_set())
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


class _Halt(StoppingCriteria):
    """Ends generation when ``should_stop()`` says so (a stop string was seen, or the client went away)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


class _TextPieces(BaseStreamer):
    """Receives token ids from ``generate`` and hands on the text they add, once final: not a half character, not
    the start of what may become a stop string; at a stop string it cuts the text there and sets ``stopped``."""

    def __init__(self, tokenizer, stop: tuple[str, ...], on_text: Callable[[str], None]) -> None:
        self.tokenizer, self.stop, self.on_text = tokenizer, tuple(s for s in stop if s), on_text
        self.ids: list[int] = []
        self.text = ""  # what has been handed on
        self.stopped = False
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate's first call carries the prompt
            self._prompt_seen = True
            return
        if self.stopped:
            return
        self.ids.extend(value.reshape(-1).tolist())
        decoded = self._decode()
        if decoded.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return
        self._hand_on(decoded, final=False)

    def end(self) -> None:
        if not self.stopped:
            self._hand_on(self._decode(), final=True)

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _hand_on(self, decoded: str, final: bool) -> None:
        cut = min((i for i in (decoded.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            decoded, self.stopped = decoded[:cut], True
        ready = len(decoded) if final or self.stopped else len(decoded) - _held_back(decoded, self.stop)
        if ready > len(self.text):
            piece = decoded[len(self.text):ready]
            self.text += piece
            self.on_text(piece)


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may be the start of a stop string."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
               default=0)
