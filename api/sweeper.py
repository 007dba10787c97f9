"""The API's lease sweeper: a thread that ends what dead leases left, so job states stay true with no worker."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import sessionmaker

from .job_store import release_dead_leases
from .settings import Settings

log = logging.getLogger(__name__)


class LeaseSweeper:
    """Calls :func:`api.job_store.release_dead_leases` at start and every ``heartbeat_s`` until :meth:`stop`."""

    def __init__(self, sessions: sessionmaker, settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mol-lease-sweeper", daemon=True)

    def start(self) -> LeaseSweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for job_id in release_dead_leases(self.sessions, self.settings.lease_timeout_s):
                    log.warning("job %s: its runner's lease was dead; released", job_id)
            except Exception:  # the database may be down for a while: keep sweeping once it is back
                log.exception("lease sweep failed; trying again in %s s", self.settings.heartbeat_s)
            self._stop.wait(self.settings.heartbeat_s)

    def stop(self) -> None:
        """Ends the thread (after the sweep in progress, if any)."""
        self._stop.set()
        self._thread.join(timeout=30)
