"""Handing job ids to the workers: one Celery queue per process count, and what the broker still holds.

A job asking for ``nproc`` processes goes to :func:`queue_for` ``(nproc)``; a worker of capacity C consumes the
queues of every count up to C (:func:`queues_up_to`), so a 4-process job waits for a worker with 4 GPUs while
1-process jobs run anywhere. Side tasks (interpolations, task evaluations) have a queue of their own,
``SIDE_QUEUE``, which every worker consumes after its jobs' queues. Kombu takes a worker's queues in turn (round
robin: Redis moves the queue it last took from to the end, the filesystem transport moves on to the next), so
after each side task a waiting training job goes first: it waits for at most one side task, never for all those
queued before it.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from api.settings import Settings

TASK_NAME = "mol.run_job"
INTERPOLATE_TASK = "mol.interpolate"  # work beside a job's training, on the side tasks' queue: interpolations,
EVALUATE_TASK = "mol.evaluate_task"  # and task evaluations
DEFAULT_QUEUE = "mol-jobs"
SIDE_QUEUE = "mol-side"  # not "mol-jobs-...": the reconciler reads the jobs' queues by that prefix
UNACKED_KEY = "unacked"  # kombu's Redis transport keeps delivered, unacknowledged messages in this hash

log = logging.getLogger(__name__)


def queue_for(nproc: int) -> str:
    """The queue of jobs that run on ``nproc`` processes: ``mol-jobs`` for one, ``mol-jobs-N`` for N."""
    return DEFAULT_QUEUE if nproc == 1 else f"{DEFAULT_QUEUE}-{nproc}"


def queues_up_to(capacity: int) -> list[str]:
    """The queues a worker that can give a job ``capacity`` processes consumes: its jobs' queues, then the side
    tasks' queue."""
    return [queue_for(n) for n in range(1, capacity + 1)] + [SIDE_QUEUE]


def celery_enqueue(settings: Settings) -> Callable[..., None]:
    """A function ``enqueue(job_id, nproc=1)`` that queues one job id on the Celery broker of ``settings``."""
    from .celery_app import make_celery

    celery = make_celery(settings)

    def enqueue(job_id: str, nproc: int = 1) -> None:
        celery.send_task(TASK_NAME, args=[job_id], queue=queue_for(nproc))

    return enqueue


def celery_task_sender(settings: Settings, task_name: str) -> Callable[..., None]:
    """A function ``send(*args)`` that queues the side task ``task_name`` with ``args`` on the side tasks' queue
    of ``settings``' broker."""

    def send(*args) -> None:
        from .celery_app import make_celery

        make_celery(settings).send_task(task_name, args=list(args), queue=SIDE_QUEUE)

    return send


def message_job_id(raw: str | bytes) -> str | None:
    """The job id a Celery message (kombu's JSON envelope, protocol 2 body) carries, or None if it is not ours."""
    try:
        envelope = json.loads(raw)
        if envelope.get("headers", {}).get("task") != TASK_NAME:
            return None
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if args and isinstance(args[0], str) else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def waiting_job_ids(settings: Settings) -> set[str] | None:
    """Job ids of the messages waiting in the broker's queues (not yet delivered), or None for a broker this
    cannot read (the caller then cannot tell a lost message from a waiting one). Raises when the broker is down."""
    if settings.uses_filesystem_broker:
        return _ids(_read(path) for path in _files(settings.broker_dir / "out"))
    if settings.broker.startswith("redis"):
        import redis

        client = redis.Redis.from_url(settings.broker, socket_timeout=10)
        try:
            keys = [k for k in client.scan_iter(match=f"{DEFAULT_QUEUE}*", count=1000) if client.type(k) == b"list"]
            return _ids(raw for key in keys for raw in client.lrange(key, 0, -1))
        finally:
            client.close()
    return None


def _files(folder: Path) -> list[Path]:
    """The message files kombu's filesystem transport keeps in ``folder`` (a file taken meanwhile is skipped)."""
    return [p for p in folder.glob("*.msg") if p.is_file()] if folder.is_dir() else []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # a worker took it meanwhile
        return b""


def _ids(messages: Iterable[bytes]) -> set[str]:
    return {job_id for raw in messages if (job_id := message_job_id(raw))}
