"""Which database of the shared Redis (127.0.0.1:6379) a test run's worker tests use: they flush it, so two runs on
one machine (two checkouts, two terminals, pytest-xdist's processes) must never share one.

A run claims a database by an exclusive lock on a file of the machine's temporary folder, held until the process
ends (the kernel releases it even after a kill -9, so a crashed run leaves nothing to clean up). Without
``MOL_TEST_REDIS_DB`` the first free one of CANDIDATES is claimed; with it, that database, and a run that finds it
claimed stops with a message instead of flushing another run's queue.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO

CANDIDATES = (*range(11, 16), *range(1, 11))  # 11 first, the old fixed default; never 0, a local service's default
_held: dict[int, IO[str]] = {}  # database -> its open lock file (open while this process runs)


def lock_path(db: int) -> Path:
    """The lock file that claims database ``db`` of 127.0.0.1:6379 on this machine."""
    return Path(tempfile.gettempdir()) / f"mol-test-redis-6379-db{db}.lock"


def _try_claim(db: int) -> bool:
    """Whether this process holds (now or already) the lock of database ``db``."""
    if db in _held:
        return True
    handle = lock_path(db).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[db] = handle
    return True


def claim_redis_db(environ: dict[str, str] | None = None) -> int:
    """The database this process's worker tests may flush: ``MOL_TEST_REDIS_DB`` if set, else the first free one of
    CANDIDATES. RuntimeError when the one asked for, or every candidate, is claimed by another run."""
    environ = os.environ if environ is None else environ
    asked = environ.get("MOL_TEST_REDIS_DB")
    if asked is not None:
        db = int(asked)
        if not _try_claim(db):
            raise RuntimeError(f"MOL_TEST_REDIS_DB={db}: another test run on this machine uses Redis database {db} "
                               f"({lock_path(db)}); unset MOL_TEST_REDIS_DB to take a free one")
        return db
    for db in (*_held, *CANDIDATES):
        if _try_claim(db):
            return db
    raise RuntimeError(f"every Redis database of {CANDIDATES} is claimed by another test run on this machine")
