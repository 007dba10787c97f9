"""POST/GET /v1/jobs, cancel, pause and resume, metrics and events (JSON, or a live SSE stream)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from mol_engine.spec import JobSpec, Method, format_validation_error
from store import jobs
from store.db import MAX_SEQ, Job, JobEvent, MetricPoint, is_id
from store.jobs import JobFilter, JobStatus, KeyReused, create_job, page_of_jobs, send_job
from store.quotas import QuotaExceeded
from store.scheduling import Place, check_queued_quota, queue_places
from store.settings import Settings
from store.usage import job_totals, tree_bytes

from ..deps import DB, OwnedJob, Owner, Svc
from ..schemas.common import SSE, errors, json_body, utc_iso
from ..schemas.jobs import EventOut, JobOut, JobPage, JobSummary, MetricPointOut
from ..schemas.usage import JobUsageOut
from ..services.handover import hand_to_workers
from ..services.quotas import check_usage_quotas
from ..services.submission import continued_from, submit_problems
from ..stream import job_stream

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(401, 422))
# The database compares it with a 32-bit column: a larger one is a 422 naming it, not a 500
After = Annotated[int, Query(ge=0, le=MAX_SEQ, description="only rows after this seq")]
Limit = Annotated[int, Query(ge=1, le=200, description="jobs per page")]
AfterJob = Annotated[str | None, Query(description="a job id: list the jobs older than it (a page's last_id)")]
StatusIs = Annotated[JobStatus | None, Query(description="only jobs in this status")]
MethodIs = Annotated[Method | None, Query(description="only jobs of this method")]
NameHas = Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[^\x00]*$",
                                      description="only jobs whose name contains this (case-insensitive)")]
# Printable ASCII, as Stripe's keys: a NUL would reach PostgreSQL, which refuses it in text
IdemKey = Annotated[str | None, Header(min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$",
                                       description="retrying with the same key and body returns the same job")]


def job_out(job: Job, places: dict[str, Place] | None = None) -> JobOut:
    """The job as answers show it; a queued one with its place in the queue (``places``: store.scheduling's)."""
    return with_place(JobOut.model_validate(job), places)


def with_place(out: JobSummary, places: dict[str, Place] | None) -> JobSummary:
    """``out`` with its queue position and wait reason, if ``places`` has it (a queued job)."""
    place = (places or {}).get(out.id)
    if place is not None:
        out.queue_position, out.wait_reason = place.position, place.reason
    return out


def places_of(db: Session, settings: Settings, jobs: list[Job]) -> dict[str, Place]:
    """The queue's places (one read of the queued jobs) when any of ``jobs`` is queued, else none."""
    return queue_places(db, settings) if any(j.status == "queued" for j in jobs) else {}


@router.post("", status_code=201, response_model=JobOut, openapi_extra=json_body(JobSpec),
             responses={200: {"model": JobOut, "description": "the job made earlier with this Idempotency-Key"}}
             | errors(400, 403, 404, 409, 429, 503))
def submit_job(body: dict[str, Any], owner: Owner, db: DB, svc: Svc, response: Response,
               idempotency_key: IdemKey = None) -> JobOut:
    try:
        spec = JobSpec.model_validate(body)
    except ValidationError as err:
        raise HTTPException(422, format_validation_error(err)) from None
    lineage = continued_from(db, owner, spec, svc.settings)  # 404 or 409 for a checkpoint that is not there
    problems = submit_problems(db, owner, spec, svc.settings, lineage)
    if problems:
        raise HTTPException(422, "\n".join(problems))
    check_usage_quotas(db, owner, svc.settings)  # 429 past today's accelerator-hours or the storage quota
    try:
        check_queued_quota(db, svc.settings, owner, adding=1, key=idempotency_key)
    except QuotaExceeded as err:
        raise HTTPException(429, str(err)) from None
    db.close()  # the rest runs in short sessions of its own
    try:
        job, new = create_job(svc.sessions, owner, spec, idempotency_key, lineage=lineage)
    except KeyReused:
        raise HTTPException(409, f"Idempotency-Key: '{idempotency_key}' was used for a different request in the "
                                 "last 24 h; use a new key for a new job") from None
    if not new:
        response.status_code = 200
    else:
        hand_to_workers(svc, job)
    with svc.sessions() as session:
        return job_out(job, places_of(session, svc.settings, [job]))


@router.get("", response_model=JobPage)
def list_jobs(owner: Owner, db: DB, svc: Svc, limit: Limit = 50, after: AfterJob = None, status: StatusIs = None,
              method: MethodIs = None, q: NameHas = None) -> JobPage:
    """The owner's jobs newest first, those that pass every filter given; filters and paging combine (pass the
    same filters with each page's ``after``)."""
    cursor = None
    if after is not None:
        cursor = db.get(Job, after) if is_id(after) else None
        if cursor is None or cursor.owner != owner:
            raise HTTPException(422, f"after: no job '{after}' to list after; pass the last_id of a page")
    jobs, more = page_of_jobs(db, owner, limit, cursor, JobFilter(status, method, q))
    places = places_of(db, svc.settings, jobs)
    return JobPage(data=[with_place(JobSummary.model_validate(j), places) for j in jobs], has_more=more,
                   first_id=jobs[0].id if jobs else None, last_id=jobs[-1].id if jobs else None)


@router.get("/{job_id}", response_model=JobOut, responses=errors(404))
def get_job(job_id: str, job: OwnedJob, db: DB, svc: Svc) -> JobOut:
    return whole_job_out(db, svc.settings, job)


def whole_job_out(db: Session, settings: Settings, job: Job) -> JobOut:
    """The job as GET /v1/jobs/{id} answers it: with its place in the queue, its disk and its usage (so a page
    that redraws from a pause, resume or cancel answer loses none of them)."""
    out = job_out(job, places_of(db, settings, [job]))
    out.disk_bytes = tree_bytes(settings.run_dir(job.id).path)  # one job's directory: a walk of a few files
    out.usage = JobUsageOut(**asdict(job_totals(db, job.id)))
    return out


def answered(svc: Svc, job: Job) -> JobOut:
    """:func:`whole_job_out` read in a short session of its own (the routes that change a job closed theirs)."""
    with svc.sessions() as db:
        return whole_job_out(db, svc.settings, job)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=errors(403, 404, 409))
def cancel_job(job_id: str, _job: OwnedJob, db: DB, svc: Svc) -> JobOut:
    """Cancelled at once when nobody runs the job; a running one stops at its next step (api/jobs.py)."""
    db.close()
    try:
        job = jobs.cancel_job(svc.sessions, job_id, svc.settings.lease_timeout_s)
    except jobs.JobEnded as ended:
        raise HTTPException(409, f"job '{job_id}' is already {ended}") from None
    return answered(svc, job)


@router.post("/{job_id}/pause", response_model=JobOut, responses=errors(403, 404, 409))
def pause_job(job_id: str, _job: OwnedJob, db: DB, svc: Svc) -> JobOut:
    """Paused at once when nobody runs the job; a running one saves a checkpoint at its next step, ends
    ``paused`` and frees its worker. A paused job comes back unchanged; an ended one, or one being cancelled, is
    a 409."""
    db.close()
    try:
        job = jobs.pause_job(svc.sessions, job_id, svc.settings.lease_timeout_s)
    except jobs.JobEnded as ended:
        raise HTTPException(409, f"job '{job_id}' has already ended ({ended}): only a queued or running job "
                                 "pauses") from None
    except jobs.PauseRefused as refused:
        raise HTTPException(409, f"job '{job_id}' cannot be paused: {refused}") from None
    return answered(svc, job)


@router.post("/{job_id}/resume", response_model=JobOut, responses=errors(403, 404, 409))
def resume_job(job_id: str, _job: OwnedJob, db: DB, svc: Svc) -> JobOut:
    """A paused job goes back to the queue and continues from the checkpoint of its pause; a pause a running job
    has not reached yet is withdrawn; a queued or running job comes back unchanged. An ended job is a 409."""
    db.close()
    try:
        job, requeued = jobs.resume_job(svc.sessions, job_id)
    except jobs.JobEnded as ended:
        raise HTTPException(409, f"job '{job_id}' has already ended ({ended}): only a paused job resumes") from None
    if requeued:
        try:
            send_job(svc.enqueue, job_id, job.spec)
        except Exception:  # the broker is down: the job stays queued and a worker's reconciler sends it later
            log.exception("job %s: resumed, but the broker refused it; a worker's reconciler will send it", job_id)
    return answered(svc, job)


@router.delete("/{job_id}", status_code=204, responses=errors(403, 404, 409))
def delete_job(job_id: str, _job: OwnedJob, db: DB, svc: Svc) -> None:
    """Deletes an ended or paused job: its row, metric points, events and run directory (checkpoints, logs). A
    queued or running job is a 409: cancel (or pause) it first, so no worker writes to what is being removed; so is
    a job that an unfinished job continues from (base_model job:<id>@...)."""
    db.close()
    try:
        jobs.delete_job(svc.sessions, job_id)
    except jobs.JobActive as active:
        raise HTTPException(409, f"job '{job_id}' is {active}: cancel it first (or pause it)") from None
    except jobs.ParentInUse as child:
        raise HTTPException(409, f"job '{job_id}': job '{child.child_id}' ({child.status}) continues from one of its "
                                 "checkpoints; cancel that job or delete this one once it has ended") from None
    except LookupError:
        raise HTTPException(404, f"job '{job_id}' not found") from None
    shutil.rmtree(svc.settings.run_dir(job_id).path, ignore_errors=True)


@router.get("/{job_id}/metrics", responses={200: {"model": list[MetricPointOut], "content": SSE}} | errors(404))
def job_metrics(job_id: str, _job: OwnedJob, db: DB, request: Request, svc: Svc, after: After = 0):
    if "text/event-stream" in request.headers.get("accept", ""):
        db.close()  # a stream may stay open for hours: give its connection back to the pool now
        return job_stream(request, svc, job_id, kinds=("metric",))
    rows = db.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.seq > after)
                      .order_by(MetricPoint.seq))
    return [{"seq": r.seq, "step": r.step, **r.values} for r in rows]


@router.get("/{job_id}/events", responses={200: {"model": list[EventOut], "content": SSE}} | errors(404))
def job_events(job_id: str, _job: OwnedJob, db: DB, request: Request, svc: Svc, after: After = 0):
    if "text/event-stream" in request.headers.get("accept", ""):
        db.close()
        return job_stream(request, svc, job_id, kinds=("metric", "event"))
    rows = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq))
    return [{"seq": r.seq, "step": r.step, "kind": r.kind, "message": r.message, "data": r.data,
             "created_at": utc_iso(r.created_at)} for r in rows]
