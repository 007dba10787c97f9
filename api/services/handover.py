"""Handing a request's work to the workers: a job on the queue of its process count, or a side task
(interpolation, task evaluation) on the side tasks' queue; a broker that refuses it takes the request back (503)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from fastapi import HTTPException, Response

from store.db import Job, SideTask
from store.jobs import send_job, withdraw_job

from ..deps import Services
from ..side_tasks import TooManyPending, request_side_task, withdraw_side_task


@contextmanager
def handing_to_workers(what: str, withdraw: Callable[[], bool]) -> Iterator[None]:
    """Runs the block that gives the broker a request's work. When the broker refuses it (any client error:
    connection refused, timeout, auth), ``withdraw()`` takes the request back and the answer is a 503 saying no
    ``what`` was created; when ``withdraw()`` is False (a worker has started it already) the request stands."""
    try:
        yield
    except Exception as err:  # any broker client error: kombu's OperationalError, redis' ConnectionError, OSError
        if withdraw():
            raise HTTPException(503, f"the job queue is unavailable ({type(err).__name__}); no {what} was created: "
                                     "send the same request again later") from None


def queue_side_task(svc: Services, owner: str, job_id: str, kind: str, params: dict[str, Any],
                    send: Callable[..., None], response: Response) -> SideTask:
    """The owner's side task ``kind`` of ``job_id`` with ``params``: the same request made earlier, still pending
    or done (the answer becomes a 200), else a new one given to the workers as ``send(job_id, *params.values(),
    side_task_id)``. 429 naming the limit past the owner's cap; 503 when the broker refuses (nothing recorded)."""
    limit = svc.settings.side_tasks_per_owner
    try:
        task, new = request_side_task(svc.sessions, owner, job_id, kind, params, limit,
                                      timedelta(hours=svc.settings.side_task_expiry_h))
    except TooManyPending:
        raise HTTPException(429, f"too many side tasks: you have {limit} interpolations and task evaluations "
                                 f"queued or running, the most one owner may (MOL_SIDE_TASKS_PER_OWNER = {limit}); "
                                 "send it again once one has ended") from None
    if not new:
        response.status_code = 200
        return task
    with handing_to_workers(kind.replace("-", " "), lambda: withdraw_side_task(svc.sessions, task.id)):
        send(job_id, *params.values(), task.id)
    return task


def hand_to_workers(svc: Services, job: Job) -> None:
    """Enqueue ``job`` on the queue of its process count; when the broker refuses, withdraw the job (503) unless a
    worker already started it. One-process jobs go to the default queue: an ``enqueue(job_id)`` serves them."""
    with handing_to_workers("job", lambda: withdraw_job(svc.sessions, job.id)):
        send_job(svc.enqueue, job.id, job.spec)
