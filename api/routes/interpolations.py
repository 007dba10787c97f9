"""POST/GET /v1/jobs/{id}/interpolations: the models between the base and a checkpoint, evaluated on a worker.

A request queues the worker task ``mol.interpolate`` (worker/tasks.py), which runs the engine's
``evaluate_interpolation`` and stores its rows as an ``interpolation`` event of the job; GET lists those events.
It is one of the owner's side tasks (api/side_tasks.py): capped per owner, and the same request made again while
one is pending or done answers that one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select

from mol_engine.interpolate import DEFAULT_ALPHAS, MAX_ALPHAS, check_alphas
from mol_engine.run_dir import BEST_NAME, STEP_NAME_PATTERN, step_name
from store.db import JobEvent
from store.dispatch import INTERPOLATE_TASK

from ..deps import DB, Owner, Svc, queue_side_task, worker_task_sender
from ..schemas import UtcDatetime, errors
from .checkpoints import resolve_name
from .jobs import owned_job

router = APIRouter(prefix="/v1/jobs/{job_id}/interpolations", tags=["interpolations"],
                   responses=errors(401, 404, 422))
EVENT_KIND = "interpolation"

Send = Callable[[str, str, list[float], str], None]  # (job id, checkpoint name, alphas, side task id) -> queued


class InterpolationIn(BaseModel):
    """Which checkpoint to interpolate with the base, and at which α."""

    checkpoint: str = Field("best", pattern=rf"^({BEST_NAME}|{STEP_NAME_PATTERN})$", description="'step-N' or 'best'")
    alphas: list[float] = Field(list(DEFAULT_ALPHAS), min_length=1, max_length=MAX_ALPHAS,
                                description=f"θ(α) = (1−α)·base + α·checkpoint, each α in [0, 1], at most "
                                            f"{MAX_ALPHAS}")

    @field_validator("alphas")
    @classmethod
    def _within_0_1(cls, alphas: list[float]) -> list[float]:
        return check_alphas(alphas)  # the engine's rule: InterpolationError is a ValueError, so a 422


class InterpolationQueued(BaseModel):
    id: str = Field(description="the side task: the same request while it is pending or done answers it again")
    job_id: str
    checkpoint: str
    alphas: list[float]
    status: Literal["queued", "running", "done"] = "queued"


class InterpolationOut(BaseModel):
    """One interpolation of a job: its rows (``alpha``, ``domain_ppl``, ``general_kl``...) or why it failed."""

    checkpoint: str
    step: int
    alphas: list[float]
    rows: list[dict[str, float]] | None
    error: str | None
    created_at: UtcDatetime


celery_sender = worker_task_sender(INTERPOLATE_TASK)  # queues ``mol.interpolate`` on the side tasks' queue
Sender = Annotated[Send, Depends(celery_sender)]


@router.post("", status_code=202, response_model=InterpolationQueued,
             responses={200: {"model": InterpolationQueued, "description": "the same request, pending or done"}}
             | errors(400, 409, 429, 503))
def request_interpolation(job_id: str, body: InterpolationIn, owner: Owner, db: DB, svc: Svc, send: Sender,
                          response: Response) -> InterpolationQueued:
    owned_job(db, owner, job_id)
    db.close()  # the rest runs in short sessions of its own
    run = svc.settings.run_dir(job_id)
    name = resolve_name(run.path, body.checkpoint)  # 'best' before any evaluation: 409
    if not run.checkpoint(name).is_dir():
        raise HTTPException(404, f"checkpoint '{body.checkpoint}' not found")
    task = queue_side_task(svc, owner, job_id, EVENT_KIND, {"checkpoint": name, "alphas": body.alphas}, send,
                           response)
    return InterpolationQueued(id=task.id, job_id=job_id, checkpoint=name, alphas=body.alphas, status=task.status)


@router.get("", response_model=list[InterpolationOut])
def list_interpolations(job_id: str, owner: Owner, db: DB) -> list[InterpolationOut]:
    owned_job(db, owner, job_id)
    events = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == EVENT_KIND)
                        .order_by(JobEvent.seq))
    return [interpolation_out(e.step, e.data or {}, e.created_at) for e in events]


def interpolation_out(step: int, data: dict[str, Any], created_at: datetime) -> InterpolationOut:
    return InterpolationOut(checkpoint=data.get("checkpoint", step_name(step)), step=step,
                            alphas=data.get("alphas", []), rows=data.get("rows"), error=data.get("error"),
                            created_at=created_at)
