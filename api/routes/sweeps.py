"""POST/GET /v1/sweeps: a base spec and a grid made into a group of jobs (mol_engine/sweep.py expands it), each
submitted as POST /v1/jobs submits one, and a sweep's jobs with the Pareto frontier of domain gain against
general drift."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import ValidationError
from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from mol_engine.spec import JobSpec, format_validation_error
from mol_engine.sweep import GRID_KEYS, SweepError, expand_grid, pareto_frontier, ranked, result_point
from store.db import Job, MetricPoint, Sweep, is_id
from store.jobs import create_job, withdraw_job
from store.quotas import QuotaExceeded
from store.scheduling import check_queued_quota

from ..deps import DB, Owner, Services, Svc
from ..schemas.common import errors
from ..schemas.sweeps import MAX_GRID_VALUES, SweepBoundsOut, SweepIn, SweepJobOut, SweepList, SweepOut, SweepSummary
from ..services.handover import hand_to_workers
from ..services.quotas import check_usage_quotas
from ..services.submission import continued_from, submit_problems

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=errors(401, 422))
Limit = Annotated[int, Query(ge=1, le=200, description="sweeps listed, newest first")]


def _validated_base(base: dict[str, Any]) -> JobSpec:
    """The base spec validated; else a 422 whose lines each name ``base.<field>``."""
    try:
        return JobSpec.model_validate(base)
    except ValidationError as err:
        problem = "\n".join(f"base.{line}" for line in format_validation_error(err).splitlines())
        raise HTTPException(422, problem) from None


@router.post("", status_code=201, response_model=SweepOut, responses=errors(400, 403, 429, 503))
def create_sweep(body: SweepIn, owner: Owner, db: DB, svc: Svc) -> SweepOut:
    """One job per grid point, on the base spec's data and seed; a grid over MOL_MAX_SWEEP_JOBS jobs is a 422, and
    one that would take the owner past their queued jobs (MOL_OWNER_QUEUED_JOBS) a 429.
    The sweep keeps the base and the grid as validated, not as sent."""
    base = body.base | ({"name": body.name} if body.name else {})
    validated = _validated_base(base)
    try:
        points = [spec for _, spec in expand_grid(base, body.grid, svc.settings.max_sweep_jobs)]
    except SweepError as err:
        raise HTTPException(422, str(err)) from None
    specs = [JobSpec.model_validate(spec) for spec in points]
    lineages = [continued_from(db, owner, spec, svc.settings) for spec in specs]
    problems = [p for spec, lineage in zip(specs, lineages, strict=True)
                for p in submit_problems(db, owner, spec, svc.settings, lineage)]
    if problems:
        raise HTTPException(422, "\n".join(dict.fromkeys(problems)))
    check_usage_quotas(db, owner, svc.settings)  # 429 past today's accelerator-hours or the storage quota
    try:
        check_queued_quota(db, svc.settings, owner, adding=len(specs))
    except QuotaExceeded as err:
        raise HTTPException(429, str(err)) from None
    db.close()  # the rest runs in short sessions of its own
    as_json = validated.model_dump(mode="json")
    base_spec = {key: as_json[key] for key in body.base if key in as_json}
    sweep = _insert_sweep(svc.sessions, owner, validated.name, base_spec, grid_as_validated(body.grid, points))
    jobs = [create_job(svc.sessions, owner, spec, sweep_id=sweep.id, lineage=lineage)[0]
            for spec, lineage in zip(specs, lineages, strict=True)]
    _hand_all_to_workers(svc, sweep, jobs)
    with svc.sessions() as session:
        return sweep_out(session, sweep)


def grid_as_validated(grid: dict[str, list[Any]], specs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """``grid`` with its values as its jobs' validated specs hold them (``' 4 : 1'`` is ``4:1``), in the order
    given (expand_grid refuses two values that validate alike)."""
    return {key: list(dict.fromkeys(spec[key] for spec in specs)) for key in grid}


def _insert_sweep(sessions: sessionmaker, owner: str, name: str, base_spec: dict[str, Any],
                  grid: dict[str, list[Any]]) -> Sweep:
    with sessions.begin() as db:
        sweep = Sweep(owner=owner, name=name[:200], base_spec=base_spec, grid=grid)
        db.add(sweep)
    return sweep


def _hand_all_to_workers(svc: Services, sweep: Sweep, jobs: list[Job]) -> None:
    """Enqueue each job as POST /v1/jobs does; when the broker refuses one, withdraw it and the rest (503), and the
    sweep too when none was queued."""
    for sent, job in enumerate(jobs):
        try:
            hand_to_workers(svc, job)
        except HTTPException as refused:
            for later in jobs[sent + 1:]:
                withdraw_job(svc.sessions, later.id)
            if sent == 0:
                with svc.sessions.begin() as db:
                    db.execute(delete(Sweep).where(Sweep.id == sweep.id))
                raise
            raise HTTPException(503, f"the job queue is unavailable: {sent} of {len(jobs)} jobs of sweep "
                                     f"'{sweep.id}' were queued, the others withdrawn ({refused.detail})") from None


@router.get("", response_model=SweepList)
def list_sweeps(owner: Owner, db: DB, limit: Limit = 50) -> SweepList:
    rows = list(db.scalars(select(Sweep).where(Sweep.owner == owner)
                           .order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)))
    counts = _status_counts(db, [s.id for s in rows[:limit]])
    return SweepList(data=[_summary(s, counts.get(s.id, {})) for s in rows[:limit]], has_more=len(rows) > limit)


@router.get("/bounds", response_model=SweepBoundsOut)
def sweep_bounds(owner: Owner, svc: Svc) -> SweepBoundsOut:
    """What a grid may hold here: the fields it may vary, values per field, and jobs in all (MOL_MAX_SWEEP_JOBS)."""
    return SweepBoundsOut(keys=list(GRID_KEYS), max_values=MAX_GRID_VALUES, max_jobs=svc.settings.max_sweep_jobs)


@router.get("/{sweep_id}", response_model=SweepOut, responses=errors(404))
def get_sweep(sweep_id: str, owner: Owner, db: DB) -> SweepOut:
    sweep = db.get(Sweep, sweep_id) if is_id(sweep_id) else None
    if sweep is None or sweep.owner != owner:
        raise HTTPException(404, f"sweep '{sweep_id}' not found")
    return sweep_out(db, sweep)


def _status_counts(db: Session, sweep_ids: list[str]) -> dict[str, dict[str, int]]:
    """sweep id -> {status: jobs}."""
    counts: dict[str, dict[str, int]] = {}
    query = (select(Job.sweep_id, Job.status, func.count()).where(Job.sweep_id.in_(sweep_ids))
             .group_by(Job.sweep_id, Job.status))
    for sweep_id, status, n in db.execute(query):
        counts.setdefault(sweep_id, {})[status] = n
    return counts


def _summary(sweep: Sweep, statuses: dict[str, int]) -> SweepSummary:
    return SweepSummary(id=sweep.id, name=sweep.name, grid=sweep.grid, created_at=sweep.created_at,
                        jobs=sum(statuses.values()), statuses=statuses)


def _evaluations(db: Session, jobs: list[Job]) -> dict[str, list[dict[str, Any]]]:
    """job id -> its metric points that may hold an evaluation: step 0, multiples of its ``eval_every`` and its
    last step (where the final evaluation is); not the thousands of training steps between."""
    out: dict[str, list[dict[str, Any]]] = {job.id: [] for job in jobs}
    if not jobs:
        return out
    at_evaluations = or_(*(and_(MetricPoint.job_id == job.id,
                                or_(MetricPoint.step % max(int(job.spec.get("eval_every") or 1), 1) == 0,
                                    MetricPoint.step == job.step)) for job in jobs))
    for job_id, step, values in db.execute(select(MetricPoint.job_id, MetricPoint.step, MetricPoint.values)
                                           .where(at_evaluations).order_by(MetricPoint.seq)):
        out[job_id].append({**values, "step": step})
    return out


def sweep_out(db: Session, sweep: Sweep) -> SweepOut:
    """The sweep with its jobs, best gain first, and its frontier (mol_engine/sweep.py holds the rules)."""
    jobs = {j.id: j for j in db.scalars(select(Job).where(Job.sweep_id == sweep.id).order_by(Job.created_at, Job.id))}
    evaluations = _evaluations(db, list(jobs.values()))
    points = [result_point(job_id, evaluations[job_id]) for job_id in jobs]
    rows = [SweepJobOut(**row, name=jobs[row["id"]].name, status=jobs[row["id"]].status, step=jobs[row["id"]].step,
                        max_steps=jobs[row["id"]].max_steps,
                        values={key: jobs[row["id"]].spec.get(key) for key in sweep.grid})
            for row in ranked(points)]
    statuses = dict(Counter(job.status for job in jobs.values()))
    return SweepOut(**_summary(sweep, statuses).model_dump(), base_spec=sweep.base_spec, data=rows,
                    frontier=pareto_frontier(points))
