"""GET /v1/jobs/{id}/side-tasks: the job's interpolations and task evaluations still queued or running.

A page (or script) that asked for one reads this until it is gone, then the result from GET .../interpolations or
.../evaluations: after a job has ended its event stream is closed, so nothing else says that a result landed.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from ..deps import DB, OwnedJob, Svc
from ..schemas.common import errors
from ..schemas.side_tasks import SideTaskOut
from ..side_tasks import pending_side_tasks

router = APIRouter(prefix="/v1/jobs/{job_id}/side-tasks", tags=["side tasks"], responses=errors(401, 404, 422))


@router.get("", response_model=list[SideTaskOut])
def list_pending_side_tasks(job_id: str, _job: OwnedJob, db: DB, svc: Svc) -> list[SideTaskOut]:
    """The job's side tasks queued or running, oldest first (one pending past ``MOL_SIDE_TASK_EXPIRY_H`` is taken
    for lost and not listed); an empty list once every result has landed."""
    expiry = timedelta(hours=svc.settings.side_task_expiry_h)
    return [SideTaskOut(id=t.id, kind=t.kind, status=t.status, created_at=t.created_at)
            for t in pending_side_tasks(db, job_id, expiry)]
