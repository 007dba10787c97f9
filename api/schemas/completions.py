"""Completions, in OpenAI's request and response shapes: text and chat, whole or streamed."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\\ud800" escapes make these; UTF-8 cannot encode them


MIN_TEMPERATURE = 0.01  # above 0 and below it, logits / temperature overflow: the sampler has nothing to draw from


def utf8_text(text: str) -> str:
    """``text`` when it encodes as UTF-8; ValueError at a lone surrogate (what a tokenizer and a JSON answer of it
    would fail on)."""
    found = _SURROGATE.search(text)
    if found:
        raise ValueError(f"not valid Unicode: a lone surrogate (U+{ord(found.group()):04X}) at character "
                         f"{found.start()}")
    return text


Utf8Str = Annotated[str, AfterValidator(utf8_text)]


class CompletionIn(BaseModel):
    """``POST /v1/completions``, as OpenAI's: ``model`` is a base model id or a checkpoint id (``job_…:step-N``)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI's other fields (user, logit_bias…) are accepted and unused
    model: Utf8Str
    prompt: str | list[str] = Field(description="one prompt, not empty (a list holding one is accepted too)")
    max_tokens: int = Field(16, ge=1, description="at most MOL_MAX_COMPLETION_TOKENS")
    temperature: float = Field(1.0, ge=0, le=2, description=f"0: greedy; else at least {MIN_TEMPERATURE}")
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="up to 4 strings that end the completion (not included in it)")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="a 64-bit integer")
    n: int = Field(1, ge=1, le=1, description="one completion per request")
    stream: bool = False

    @field_validator("prompt")
    @classmethod
    def _usable_prompts(cls, prompt: str | list[str] | None) -> str | list[str] | None:
        """The prompt(s), each not empty and valid Unicode (None passes: a chat has messages instead)."""
        for text in [prompt] if isinstance(prompt, str) else prompt or []:
            if not text:
                raise ValueError("empty: give at least one character to complete")
            utf8_text(text)
        return prompt

    @field_validator("stop")
    @classmethod
    def _usable_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        for text in [stop] if isinstance(stop, str) else stop or []:
            utf8_text(text)
        return stop

    @field_validator("temperature")
    @classmethod
    def _samplable_temperature(cls, temperature: float) -> float:
        if 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"{temperature} is too small to sample with: 0 (greedy) or {MIN_TEMPERATURE} to 2")
        return temperature

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatMessage(BaseModel):
    role: Utf8Str
    content: Utf8Str


class ChatCompletionIn(CompletionIn):
    """``POST /v1/chat/completions``: ``messages`` instead of ``prompt``, for models whose tokenizer has a chat
    template."""

    prompt: None = Field(None, exclude=True)
    messages: list[ChatMessage] = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None  # stop, length; null in the chunks before the last


class CompletionOut(BaseModel):
    """OpenAI's ``text_completion`` (and, one per SSE ``data:`` line, its chunks with ``usage`` null)."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None


class ChatCompletionOut(BaseModel):
    """OpenAI's ``chat.completion``; streamed as ``chat.completion.chunk`` with ``delta`` for ``message``."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
