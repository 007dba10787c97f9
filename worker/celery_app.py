"""The Celery application, configured for hour-long GPU jobs.

acks_late + reject_on_worker_lost: a task whose worker dies is redelivered, never lost; prefetch 1: a
worker holds one job at a time; a visibility timeout longer than any job: Redis never redelivers a healthy
job (the database lease, not the broker, decides who runs a job). A worker consumes the queue of every process
count up to its capacity (``MOL_WORKER_CAPACITY``, see worker/queue.py), then the side tasks' queue: taken in
turn with them, so side tasks never hold a training job back for more than one of them.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from api.settings import Settings

from .queue import DEFAULT_QUEUE, queues_up_to

VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app on ``settings``' broker (Redis, or kombu's filesystem transport under MOL_HOME)."""
    settings = settings or Settings()
    app = Celery("mol", broker=settings.broker, include=["worker.tasks"])
    transport: dict = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if settings.uses_filesystem_broker:
        folder = settings.broker_dir.resolve()
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport |= {"data_folder_in": str(folder / "out"), "data_folder_out": str(folder / "out"),
                      "processed_folder": str(folder / "processed"), "control_folder": str(folder / "control"),
                      "store_processed": False}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_track_started=False,
        task_ignore_result=True,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[Queue(name, routing_key=name) for name in queues_up_to(settings.worker_capacity)],
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


app = make_celery()
