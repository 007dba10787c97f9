"""Models: the base models and checkpoints in OpenAI's model shape, and the demo model's state."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelOut(BaseModel):
    """OpenAI's model object (``id``, ``object``, ``created``, ``owned_by``) with the model's type and kind."""

    id: str  # the name a job spec's base_model takes; the server's path stays private
    object: Literal["model"] = "model"
    created: int = 0  # Unix seconds: when the base model's files, or the checkpoint, were written
    owned_by: str = "mol-studio"  # a base model: the server's; a checkpoint: its job's owner
    model_type: str | None = None
    kind: str = "base"  # or "checkpoint" (``<job_id>:step-N``, listed with ?include=checkpoints): completions only
    job_name: str | None = None  # a checkpoint's: the name of its job, which people know it by
    checkpoint: str | None = None  # a checkpoint's name in its job: ``best`` or ``step-N``
    step: int | None = None  # a checkpoint's step (``best``'s: the step it names)


class ModelList(BaseModel):
    """``GET /v1/models`` in OpenAI's list shape, which ``OpenAI(...).models.list()`` reads."""

    object: Literal["list"] = "list"
    data: list[ModelOut]


class DemoOut(BaseModel):
    """Where the demo model stands; ``eta_s`` while it pretrains (from its pace so far)."""

    state: str  # ready, building, failed, absent (not built and no build running), off (MOL_DEMO_MODEL=false)
    phase: str | None = None  # while building: writing the corpora, training the tokenizer, pretraining, saving
    step: int = 0
    total: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    message: str
