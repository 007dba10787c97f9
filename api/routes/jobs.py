"""POST/GET /v1/jobs, cancel, metrics and events (JSON, or a live SSE stream)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import ValidationError
from sqlalchemy import select

from mol_engine.spec import JobSpec, format_validation_error

from ..db import MAX_SEQ, Dataset, Job, JobEvent, MetricPoint, is_id, utcnow
from ..deps import DB, Owner, Svc
from ..disk import tree_bytes
from ..schemas import JobOut
from ..stream import job_stream
from ..validation import available_models, check_references

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# The database compares it with a 32-bit column: a larger one is a 422 naming it, not a 500
After = Annotated[int, Query(ge=0, le=MAX_SEQ, description="only rows after this seq")]


def job_out(job: Job) -> JobOut:
    return JobOut.model_validate(job)


def owned_job(db, owner: str, job_id: str) -> Job:
    job = db.get(Job, job_id) if is_id(job_id) else None
    if job is None or job.owner != owner:
        raise HTTPException(404, f"job '{job_id}' not found")
    return job


@router.post("", status_code=201, response_model=JobOut)
def submit_job(body: dict[str, Any], owner: Owner, db: DB, svc: Svc) -> JobOut:
    try:
        spec = JobSpec.model_validate(body)
    except ValidationError as err:
        raise HTTPException(422, format_validation_error(err)) from None
    owned = {d.id: d for d in db.scalars(select(Dataset).where(Dataset.owner == owner))}
    problems = check_references(spec, owned, available_models(svc.settings))
    if problems:
        raise HTTPException(422, "\n".join(problems))
    job = Job(owner=owner, name=spec.name, spec=spec.model_dump(mode="json"), max_steps=spec.max_steps)
    db.add(job)
    db.commit()
    svc.enqueue(job.id)
    return job_out(job)


@router.get("", response_model=list[JobOut])
def list_jobs(owner: Owner, db: DB) -> list[JobOut]:
    return [job_out(j) for j in db.scalars(select(Job).where(Job.owner == owner).order_by(Job.created_at.desc()))]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, owner: Owner, db: DB, svc: Svc) -> JobOut:
    out = job_out(owned_job(db, owner, job_id))
    out.disk_bytes = tree_bytes(svc.settings.runs_dir / job_id)  # one job's directory: a walk of a few files
    return out


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, owner: Owner, db: DB) -> JobOut:
    job = owned_job(db, owner, job_id)
    if job.status == "queued":
        job.status, job.finished_at = "cancelled", utcnow()
        db.add(JobEvent(job_id=job.id, step=job.step, kind="cancelled", message="cancelled before it started"))
    elif job.status == "running":
        job.cancel_requested = True
    else:
        raise HTTPException(409, f"job '{job_id}' is already {job.status}")
    db.commit()
    return job_out(job)


@router.get("/{job_id}/metrics")
def job_metrics(job_id: str, owner: Owner, db: DB, request: Request, svc: Svc, after: After = 0):
    owned_job(db, owner, job_id)
    if "text/event-stream" in request.headers.get("accept", ""):
        db.close()  # a stream may stay open for hours: give its connection back to the pool now
        return job_stream(request, svc, job_id, kinds=("metric",))
    rows = db.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.seq > after)
                      .order_by(MetricPoint.seq))
    return [{"seq": r.seq, "step": r.step, **r.values} for r in rows]


@router.get("/{job_id}/events")
def job_events(job_id: str, owner: Owner, db: DB, request: Request, svc: Svc, after: After = 0):
    owned_job(db, owner, job_id)
    if "text/event-stream" in request.headers.get("accept", ""):
        db.close()
        return job_stream(request, svc, job_id, kinds=("metric", "event"))
    rows = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq))
    return [{"seq": r.seq, "step": r.step, "kind": r.kind, "message": r.message, "data": r.data,
             "created_at": r.created_at.isoformat()} for r in rows]
