"""Handing work to the workers: the task and queue names, and the one Celery app of a process.

The API and the workers share this module and nothing else of each other: the API sends a job's id or a side
task's arguments *by task name* (:func:`job_sender`, :func:`side_task_sender`); the worker's entry module
(worker/app.py) takes the same app and adds its tasks to it. Building an app has no side effect at import.

A job asking for ``nproc`` processes goes to :func:`queue_for` ``(nproc)``; a worker of capacity C consumes the
queues of every count up to C (:func:`queues_up_to`), so a 4-process job waits for a worker with 4 GPUs while
1-process jobs run anywhere. Side tasks (interpolations, task evaluations) have a queue of their own,
``SIDE_QUEUE``, which every worker consumes after its jobs' queues. Kombu takes a worker's queues in turn (round
robin: Redis moves the queue it last took from to the end, the filesystem transport moves on to the next), so
after each side task a waiting training job goes first: it waits for at most one side task, never for all those
queued before it.

The app is configured for hour-long GPU jobs: acks_late + reject_on_worker_lost (a task whose worker dies is
redelivered, never lost); prefetch 1 (a worker holds one job at a time); a visibility timeout longer than any
job (Redis never redelivers a healthy job: the database lease, not the broker, decides who runs a job).
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from kombu import Queue

from .settings import Settings

TASK_NAME = "mol.run_job"
INTERPOLATE_TASK = "mol.interpolate"  # work beside a job's training, on the side tasks' queue: interpolations,
EVALUATE_TASK = "mol.evaluate_task"  # and task evaluations
DEFAULT_QUEUE = "mol-jobs"
SIDE_QUEUE = "mol-side"  # not "mol-jobs-...": the reconciler reads the jobs' queues by that prefix
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600

_apps: dict[tuple, Celery] = {}  # one app per process and broker (tests run several brokers in one process)


def queue_for(nproc: int) -> str:
    """The queue of jobs that run on ``nproc`` processes: ``mol-jobs`` for one, ``mol-jobs-N`` for N."""
    return DEFAULT_QUEUE if nproc == 1 else f"{DEFAULT_QUEUE}-{nproc}"


def nproc_of_queue(queue: str | None) -> int | None:
    """The process count whose jobs ``queue`` holds (:func:`queue_for` read backwards), or None for another."""
    if queue == DEFAULT_QUEUE:
        return 1
    count = (queue or "").removeprefix(f"{DEFAULT_QUEUE}-")
    return int(count) if count != queue and count.isdigit() else None


def queues_up_to(capacity: int) -> list[str]:
    """The queues a worker that can give a job ``capacity`` processes consumes: its jobs' queues, then the side
    tasks' queue."""
    return [queue_for(n) for n in range(1, capacity + 1)] + [SIDE_QUEUE]


def celery_app(settings: Settings) -> Celery:
    """This process's Celery app on ``settings``' broker (Redis, or kombu's filesystem transport under
    MOL_HOME), made on first use."""
    key = (settings.broker, str(settings.broker_dir), settings.worker_capacity)
    if key not in _apps:
        _apps[key] = _configured(settings)
    return _apps[key]


def _configured(settings: Settings) -> Celery:
    app = Celery("mol", broker=settings.broker)
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


def job_sender(settings: Settings) -> Callable[..., None]:
    """A function ``send(job_id, nproc=1)`` that queues a token for the queue of ``nproc`` processes, sent for
    ``job_id`` (a worker that takes it runs the job the scheduler then chooses: store/scheduling.py)."""
    app = celery_app(settings)

    def send(job_id: str, nproc: int = 1) -> None:
        app.send_task(TASK_NAME, args=[job_id], kwargs={"nproc": nproc}, queue=queue_for(nproc))

    return send


def side_task_sender(settings: Settings, task_name: str) -> Callable[..., None]:
    """A function ``send(*args)`` that queues the side task ``task_name`` with ``args`` on the side tasks' queue."""
    app = celery_app(settings)

    def send(*args) -> None:
        app.send_task(task_name, args=list(args), queue=SIDE_QUEUE)

    return send
