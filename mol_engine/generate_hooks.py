"""What ``transformers``' ``generate`` calls back while :func:`mol_engine.generate.generate` runs: the streamer that
hands text on as it becomes final, and the stopping criterion that ends generation early.

Apart from :mod:`mol_engine.generate` because they subclass transformers' own classes: that module loads without
transformers, this one only when a generation runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


class Halt(StoppingCriteria):
    """Ends generation when ``should_stop()`` says so (a stop string was seen, or the client went away)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


class TextPieces(BaseStreamer):
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
