"""Sample generations during training: at every evaluation the model completes a few prompts greedily.

The prompts come from the spec (``sample_prompts``: a list, or a JSONL file of ``{"prompt": ...}`` rows) or, by
default, from the data: a few questions of the QA set (in ``qa_prompt``'s form) and the first tokens of a few
held-out general blocks (domain blocks when the job has no general text). The completions reuse the playground's
:func:`mol_engine.generate.generate`, so a checkpoint completes a prompt here as it does there. The step-0
evaluation runs on the base model, so its ``samples`` event holds the base's completions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .batches import BlockSource
from .data import BadLines, DataError, QAPair, _bad, _file_lines, _records
from .generate import LoadedModel, Sampling, context_length, generate
from .spec import MAX_SAMPLE_PROMPT_CHARS as MAX_PROMPT_CHARS
from .spec import MAX_SAMPLE_PROMPTS as MAX_PROMPTS

DEFAULT_QA_PROMPTS = 2
DEFAULT_TEXT_PROMPTS = 2
PREFIX_TOKENS = 32  # tokens of a held-out block that make a default text prompt
EVENT_PROMPT_CHARS = 300  # the event keeps the end of a longer prompt (what the completion continues)
EVENT_COMPLETION_CHARS = 1_500  # ... and the start of a longer completion


@dataclass(frozen=True)
class Sample:
    prompt: str
    completion: str


def read_prompts(path: str | Path, bad: BadLines | None = None) -> list[str]:
    """The ``prompt`` of each row of a JSONL file; DataError naming the line when one is not a non-empty string
    (with ``bad``, such lines are noted there and skipped), or when there are none or more than
    :data:`MAX_PROMPTS`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    prompts = []
    for line_no, record in _records(path, _file_lines(path, bad), ("prompt",), bad):
        if not record["prompt"].strip():
            _bad(bad, DataError(f"{path}, line {line_no}: field 'prompt' is empty"))
        elif len(record["prompt"]) > MAX_PROMPT_CHARS:
            _bad(bad, DataError(f"{path}, line {line_no}: the prompt has more than {MAX_PROMPT_CHARS} characters"))
        else:
            prompts.append(record["prompt"])
        if len(prompts) > MAX_PROMPTS:
            raise DataError(f"{path}: more than {MAX_PROMPTS} prompts (each is completed at every evaluation)")
    if not prompts and not (bad and bad.count):
        raise DataError(f"{path}: no prompts found (empty file)")
    return prompts


def default_prompts(qa: Sequence[QAPair], qa_prompt: str, heldout: BlockSource | None, tokenizer) -> list[str]:
    """A few QA questions as the evaluation asks them, then the first :data:`PREFIX_TOKENS` tokens of a few
    held-out blocks, decoded."""
    prompts = [qa_prompt.format(question=pair.question) for pair in qa[:DEFAULT_QA_PROMPTS]]
    if heldout is not None and len(heldout):
        blocks = heldout.select(range(min(DEFAULT_TEXT_PROMPTS, len(heldout))))
        for ids, mask in zip(blocks.input_ids, blocks.attention_mask, strict=True):
            text = tokenizer.decode(ids[mask.bool()][:PREFIX_TOKENS].tolist(), skip_special_tokens=True).strip()
            if text:
                prompts.append(text)
    return prompts


def job_prompts(sample_prompts: list[str] | str | None, qa: Sequence[QAPair], qa_prompt: str,
                heldout: BlockSource | None, tokenizer) -> list[str]:
    """The prompts of a job: the spec's list, its file's, or (None) :func:`default_prompts`; ``[]`` for none."""
    if isinstance(sample_prompts, str):
        return read_prompts(sample_prompts)
    if sample_prompts is not None:
        return list(sample_prompts)
    return default_prompts(qa, qa_prompt, heldout, tokenizer)


def complete(model: nn.Module, tokenizer, prompts: Sequence[str], max_tokens: int) -> list[Sample]:
    """Each prompt's greedy completion of at most ``max_tokens`` tokens (a prompt too long for the context keeps
    its last tokens). The caller puts the model in eval mode (and gathers an FSDP model)."""
    loaded = LoadedModel(model=model, tokenizer=tokenizer, context=context_length(model.config, tokenizer))
    greedy = Sampling(max_tokens=max_tokens, temperature=0.0)
    room = max(loaded.context - max_tokens, 1)
    return [Sample(prompt, generate(loaded, tokenizer(prompt, add_special_tokens=True)["input_ids"][-room:],
                                    greedy).text) for prompt in prompts]


def samples_event(step: int, samples: Sequence[Sample]) -> dict[str, Any]:
    """The ``samples`` event of an evaluation, its size bounded: long prompts keep their end (marked ``…``),
    long completions their start."""
    shown = [Sample(_tail(s.prompt, EVENT_PROMPT_CHARS), _head(s.completion, EVENT_COMPLETION_CHARS)) for s in samples]
    what = "the base model's" if step == 0 else f"step {step}'s"
    return {"step": step, "kind": "samples", "message": f"{len(samples)} sample completions: {what}",
            "samples": [asdict(s) for s in shown]}


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
