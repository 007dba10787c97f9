"""Handing job ids to the workers."""

from __future__ import annotations

from collections.abc import Callable

from api.settings import Settings

TASK_NAME = "mol.run_job"


def celery_enqueue(settings: Settings) -> Callable[[str], None]:
    """A function that queues one job id on the Celery broker of ``settings``."""
    from .celery_app import make_celery

    celery = make_celery(settings)

    def enqueue(job_id: str) -> None:
        celery.send_task(TASK_NAME, args=[job_id])

    return enqueue
