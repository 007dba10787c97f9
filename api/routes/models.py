"""GET /v1/models and GET /v1/models/{id} (the base models on offer and the owner's checkpoints, in OpenAI's
shapes), and GET /v1/demo (where the demo model stands)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException

from store.models import available_models, demo_status

from ..deps import Owner, Svc
from ..openai_errors import openai_error
from ..schemas.common import errors
from ..schemas.models import DemoOut, ModelList, ModelOut
from ..services.models import base_model, checkpoint_model, checkpoint_models, resolve_model

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=errors(401, 422))
def list_models(owner: Owner, svc: Svc, include: Literal["checkpoints"] | None = None) -> ModelList:
    """The base models on offer, by name and type (their paths on the server are not shown), in OpenAI's list shape
    (``OpenAI(...).models.list()``); with ``include=checkpoints`` also the owner's checkpoints, which the
    completions routes take as ``model``."""
    bases = [base_model(name, path) for name, path in available_models(svc.settings).items()
             if (path / "config.json").is_file()]
    return ModelList(data=bases + (checkpoint_models(svc, owner) if include == "checkpoints" else []))


@router.get("/v1/models/{model_id}", response_model=ModelOut, tags=["models"], responses=errors(401, 404, 409, 422))
def retrieve_model(model_id: str, owner: Owner, svc: Svc):
    """One model by its id (``OpenAI(...).models.retrieve``): a base model, or one of the owner's checkpoints as
    ``<job_id>:step-N`` or ``<job_id>:best`` (409 while the job has no best); 404 for anything else. Errors carry
    OpenAI's ``error`` beside ``detail``, as the completions routes' do."""
    try:
        source = resolve_model(svc, owner, model_id)
    except HTTPException as err:
        return openai_error(err)
    if model_id in available_models(svc.settings):
        return base_model(model_id, source.path)
    return checkpoint_model(model_id, source.path, source.base, owner)


@router.get("/v1/demo", response_model=DemoOut, tags=["models"], responses=errors(401))
def demo(owner: Owner, svc: Svc) -> DemoOut:
    """Where the demo model stands: ``ready``; ``building`` with its phase, step/total, elapsed seconds and ETA
    (`mol up` builds it in the background); ``failed``; ``absent``; or ``off``. The dashboard shows it."""
    status = demo_status(svc.settings)
    if status is None:
        return DemoOut(state="off", message="The demo model is off (MOL_DEMO_MODEL=false).")
    return DemoOut(state=status.state, phase=status.phase, step=status.step, total=status.total,
                   elapsed_s=status.elapsed_s, eta_s=status.eta_s, message=status.message)
