"""What the broker still holds: the tokens (run_job messages) waiting in each job queue, which the reconciler
(worker/tasks.py) compares with the jobs the database says are queued, to send only those lost. (The queues
themselves and the task names are the store's: store/dispatch.py.)"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from store.dispatch import DEFAULT_QUEUE, TASK_NAME, nproc_of_queue
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


def waiting_tokens(settings: Settings) -> dict[int, int] | None:
    """The tokens waiting (not yet delivered) in the broker's job queues, by the process count of their queue, or
    None for a broker this cannot read (the caller then cannot tell a lost token from a waiting one). Raises when
    the broker is down."""
    if settings.uses_filesystem_broker:  # kombu names a message file <time>_<uuid>.<queue>.msg
        return _counts((path.name.partition(".")[2].removesuffix(".msg"), _read(path))
                       for path in _files(settings.broker_dir / "out"))
    if settings.broker.startswith("redis"):
        import redis

        client = redis.Redis.from_url(settings.broker, socket_timeout=10)
        try:
            keys = [k for k in client.scan_iter(match=f"{DEFAULT_QUEUE}*", count=1000) if client.type(k) == b"list"]
            return _counts((key.decode(), raw) for key in keys for raw in client.lrange(key, 0, -1))
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


def _counts(messages: Iterable[tuple[str, bytes]]) -> dict[int, int]:
    """(queue, message) pairs -> our tokens per process count of their queue."""
    counts: dict[int, int] = {}
    for queue, raw in messages:
        nproc = nproc_of_queue(queue)
        if nproc and message_job_id(raw):
            counts[nproc] = counts.get(nproc, 0) + 1
    return counts
