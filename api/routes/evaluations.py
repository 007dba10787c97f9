"""POST/GET /v1/jobs/{id}/evaluations: a task file (a ``task`` dataset) scored on the job's checkpoints and its base.

A request queues the worker task ``mol.evaluate_task`` (worker/tasks.py), which runs the engine's ``evaluate_task``
(lm-evaluation-harness, offline: mol_engine/task_eval.py) on each model and stores one row per model as a
``task-evaluation`` event of the job; GET lists those events. It is one of the owner's side tasks
(api/side_tasks.py): capped per owner, and the same request made again while one is pending or done answers it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from sqlalchemy import select

from mol_engine.run_dir import RunDir
from store.db import Job, JobEvent
from store.dispatch import EVALUATE_TASK
from store.lineage import trained_from
from store.models import available_models

from ..deps import DB, OwnedJob, Owner, Svc, owned_dataset, worker_task_sender
from ..schemas.common import errors
from ..schemas.side_tasks import BASE, TaskEvaluationIn, TaskEvaluationOut, TaskEvaluationQueued
from ..services.checkpoints import resolve_checkpoint_name
from ..services.handover import queue_side_task

router = APIRouter(prefix="/v1/jobs/{job_id}/evaluations", tags=["evaluations"], responses=errors(401, 404, 422))
EVENT_KIND = "task-evaluation"

Send = Callable[[str, str, list[str], str], None]  # (job id, task dataset id, model names, side task id) -> queued


celery_sender = worker_task_sender(EVALUATE_TASK)  # queues ``mol.evaluate_task`` on the side tasks' queue
Sender = Annotated[Send, Depends(celery_sender)]


@router.post("", status_code=202, response_model=TaskEvaluationQueued,
             responses={200: {"model": TaskEvaluationQueued, "description": "the same request, pending or done"}}
             | errors(400, 409, 429, 503))
def request_task_evaluation(job_id: str, body: TaskEvaluationIn, job: OwnedJob, owner: Owner, db: DB, svc: Svc,
                            send: Sender, response: Response) -> TaskEvaluationQueued:
    dataset = owned_dataset(db, owner, body.task)
    if dataset.purpose != "task":
        raise HTTPException(422, f"task: dataset '{body.task}' was uploaded for '{dataset.purpose}', not 'task'")
    names = model_names(job, svc.settings.run_dir(job_id), body.checkpoints)
    base = job.spec.get("base_model")
    if BASE in names and trained_from(svc.settings, job_id, base, available_models(svc.settings)) is None:
        raise HTTPException(422, f"checkpoints: the base model '{base}' cannot be loaded (not among GET /v1/models, "
                                 "or a checkpoint the job has not copied yet)")
    db.close()  # the rest runs in short sessions of its own
    task = queue_side_task(svc, owner, job_id, EVENT_KIND, {"task": body.task, "checkpoints": names}, send, response)
    return TaskEvaluationQueued(id=task.id, job_id=job_id, task=body.task, checkpoints=names, status=task.status)


def model_names(job: Job, run: RunDir, asked: list[str] | None) -> list[str]:
    """The models to score, in order and once each: ``base`` and ``step-N`` names (``best`` resolved; 409 before
    there is one); 404 for a checkpoint not kept, 422 for one that holds no model."""
    if asked is None:
        return [BASE] + [path.name for path in run.checkpoint_dirs()]
    names = list(dict.fromkeys(name if name == BASE else resolve_checkpoint_name(run.path, name) for name in asked))
    for name in (name for name in names if name != BASE):
        path = run.checkpoint(name)
        if not path.is_dir():
            raise HTTPException(404, f"checkpoint '{name}' not found")
        if not any((path / "model" / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise HTTPException(422, f"checkpoints: '{name}' holds no loadable model (no model/config.json)")
    return names


@router.get("", response_model=list[TaskEvaluationOut])
def list_task_evaluations(job_id: str, _job: OwnedJob, db: DB) -> list[TaskEvaluationOut]:
    events = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == EVENT_KIND)
                        .order_by(JobEvent.seq))
    return [task_evaluation_out(e.data or {}, e.created_at) for e in events]


def task_evaluation_out(data: dict[str, Any], created_at: datetime) -> TaskEvaluationOut:
    return TaskEvaluationOut(task=data.get("task", ""), filename=data.get("filename"), kind=data.get("kind"),
                             checkpoints=data.get("checkpoints", []), rows=data.get("rows"), error=data.get("error"),
                             created_at=created_at)
