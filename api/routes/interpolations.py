"""POST/GET /v1/jobs/{id}/interpolations: the models between the base and a checkpoint, evaluated on a worker.

A request queues the worker task ``mol.interpolate`` (worker/tasks.py), which runs the engine's
``evaluate_interpolation`` and stores its rows as an ``interpolation`` event of the job; GET lists those events.
It is one of the owner's side tasks (api/side_tasks.py): capped per owner, and the same request made again while
one is pending or done answers that one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from sqlalchemy import select

from mol_engine.run_dir import step_name
from store.db import JobEvent
from store.dispatch import INTERPOLATE_TASK

from ..deps import DB, OwnedJob, Owner, Svc, worker_task_sender
from ..schemas.common import errors
from ..schemas.side_tasks import InterpolationIn, InterpolationOut, InterpolationQueued
from ..services.checkpoints import resolve_checkpoint_name
from ..services.handover import queue_side_task

router = APIRouter(prefix="/v1/jobs/{job_id}/interpolations", tags=["interpolations"],
                   responses=errors(401, 404, 422))
EVENT_KIND = "interpolation"

Send = Callable[[str, str, list[float], str], None]  # (job id, checkpoint name, alphas, side task id) -> queued


celery_sender = worker_task_sender(INTERPOLATE_TASK)  # queues ``mol.interpolate`` on the side tasks' queue
Sender = Annotated[Send, Depends(celery_sender)]


@router.post("", status_code=202, response_model=InterpolationQueued,
             responses={200: {"model": InterpolationQueued, "description": "the same request, pending or done"}}
             | errors(400, 409, 429, 503))
def request_interpolation(job_id: str, body: InterpolationIn, _job: OwnedJob, owner: Owner, db: DB, svc: Svc,
                          send: Sender, response: Response) -> InterpolationQueued:
    db.close()  # the rest runs in short sessions of its own
    run = svc.settings.run_dir(job_id)
    name = resolve_checkpoint_name(run.path, body.checkpoint)  # 'best' before any evaluation: 409
    if not run.checkpoint(name).is_dir():
        raise HTTPException(404, f"checkpoint '{body.checkpoint}' not found")
    task = queue_side_task(svc, owner, job_id, EVENT_KIND, {"checkpoint": name, "alphas": body.alphas}, send,
                           response)
    return InterpolationQueued(id=task.id, job_id=job_id, checkpoint=name, alphas=body.alphas, status=task.status)


@router.get("", response_model=list[InterpolationOut])
def list_interpolations(job_id: str, _job: OwnedJob, db: DB) -> list[InterpolationOut]:
    events = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == EVENT_KIND)
                        .order_by(JobEvent.seq))
    return [interpolation_out(e.step, e.data or {}, e.created_at) for e in events]


def interpolation_out(step: int, data: dict[str, Any], created_at: datetime) -> InterpolationOut:
    return InterpolationOut(checkpoint=data.get("checkpoint", step_name(step)), step=step,
                            alphas=data.get("alphas", []), rows=data.get("rows"), error=data.get("error"),
                            created_at=created_at)
