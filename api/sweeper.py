"""The API's lease sweeper: a thread that ends what dead leases left, so job states stay true with no worker.

A job it puts back in the queue it also hands to the broker once, as a submit does: the dead worker's message is
gone, and the job then resumes as soon as a worker is free. If the broker refuses, the workers' reconciler sends
it later."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import sessionmaker

from store.jobs import job_spec, release_dead_leases, send_job
from store.settings import Settings

log = logging.getLogger(__name__)


class LeaseSweeper:
    """Calls :func:`store.jobs.release_dead_leases` at start and every ``heartbeat_s`` until :meth:`stop`."""

    def __init__(self, sessions: sessionmaker, settings: Settings, enqueue: Callable[..., None]) -> None:
        self.sessions, self.settings, self.enqueue = sessions, settings, enqueue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mol-lease-sweeper", daemon=True)

    def start(self) -> LeaseSweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for job_id, status in release_dead_leases(self.sessions, self.settings.lease_timeout_s).items():
                    log.warning("job %s: its runner's lease was dead; now %s", job_id, status)
                    if status == "queued":
                        self._send(job_id)
            except Exception:  # the database may be down for a while: keep sweeping once it is back
                log.exception("lease sweep failed; trying again in %s s", self.settings.heartbeat_s)
            self._stop.wait(self.settings.heartbeat_s)

    def _send(self, job_id: str) -> None:
        try:
            send_job(self.enqueue, job_id, job_spec(self.sessions, job_id))
        except Exception:  # the broker is down: the job stays queued and a worker's reconciler sends it later
            log.exception("job %s: could not hand it to the broker; a worker's reconciler will", job_id)

    def stop(self) -> None:
        """Ends the thread (after the sweep in progress, if any)."""
        self._stop.set()
        self._thread.join(timeout=30)
