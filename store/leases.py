"""Leases: the one rule for when a job's runner is gone, shared by the API and the workers.

A running job holds a lease: ``lease_owner`` ("host:pid" of its runner process) and ``heartbeat_at``, which the
runner refreshes every ``MOL_HEARTBEAT_S``. The lease is dead when that process is gone on this host, or its
heartbeat is older than ``MOL_LEASE_TIMEOUT_S``. Workers re-queue what dead leases leave (worker/tasks.py
reconcile); the API also sweeps every ``MOL_HEARTBEAT_S`` (api/sweeper.py), so a dead lease shows within
``lease_timeout_s + heartbeat_s`` even when no worker runs at all.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .settings import Settings


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` with its time zone; a naive one (SQLite gives those) is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _process_gone(lease_owner: str | None) -> bool:
    """Whether ``lease_owner`` names a process on this host that no longer exists."""
    host, _, pid = (lease_owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return _is_zombie(int(pid))


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but not been reaped: a runner whose worker was killed is re-parented, and in a
    container whose init does not reap it stays a zombie, which ``kill(pid, 0)`` still finds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS), or it went meanwhile
        return False
    return stat[stat.rfind(")") + 2:].startswith("Z")  # the state follows the parenthesised command name


def lease_is_dead(lease_owner: str | None, heartbeat_at: datetime | None, lease_timeout_s: float,
                  now: datetime | None = None) -> bool:
    """Whether a lease is dead: its process on this host is gone, or its heartbeat is older than the timeout."""
    heartbeat_at = as_utc(heartbeat_at)
    if heartbeat_at is None or _process_gone(lease_owner):
        return True
    return heartbeat_at < (now or datetime.now(UTC)) - timedelta(seconds=lease_timeout_s)


def worker_alive_within_s(settings: Settings) -> float:
    """How recently a worker must have been seen to count as alive: the bound after which its leases are dead."""
    return settings.lease_timeout_s
