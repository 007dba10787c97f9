"""What the broker still holds: the job ids of the messages waiting in its queues, which the reconciler
(worker/tasks.py) compares with the jobs the database says are queued, to re-send only the lost ones. (The
queues themselves and the task names are the store's: store/dispatch.py.)"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from store.dispatch import DEFAULT_QUEUE, TASK_NAME
from store.settings import Settings

log = logging.getLogger(__name__)


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
