"""How `mol up` keeps its worker: restarted with backoff whenever it dies (and reaped, never left <defunct>),
asked to stop with SIGTERM on shutdown and waited for, killed only if it does not stop in time; its output
(Celery's banner, warnings, task logs) goes to a log file, so the terminal ends with the dashboard's URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

CTRL_C_GRACE_S = 5.0  # a worker ended by SIGINT is restarted only if `mol up` did not start stopping by then


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Supervisor:
    """Runs ``command`` and starts it again each time it exits, until :meth:`stop`.

    The pause before a restart doubles from ``first_backoff_s`` up to ``max_backoff_s`` while the process keeps
    dying young, and starts over once it has lived ``healthy_after_s``. With ``log``, the process's stdout and
    stderr go to that file (each restart appends; a log of an earlier start is kept as ``<log>.1``).
    """

    def __init__(self, command: list[str], env: dict[str, str] | None = None, first_backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, healthy_after_s: float = 60.0, stop_timeout_s: float = 30.0,
                 say: Callable[[str], None] = _say, log: Path | None = None) -> None:
        self.command, self.env, self.say, self.log = command, env, say, log
        self._out: IO[bytes] | None = None
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self.healthy_after_s, self.stop_timeout_s = healthy_after_s, stop_timeout_s
        self.pauses: list[float] = []  # each pause taken before a restart, in order
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # a restart and a stop never interleave
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mol-worker-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        """The pid of the process running now (None before start)."""
        return self.proc.pid if self.proc else None

    def start(self) -> Supervisor:
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            if self.log.exists():
                os.replace(self.log, f"{self.log}.1")
            self._out = self.log.open("ab")
        self.proc = self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen:
        out = self._out
        return subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT if out else None)

    def next_pause(self, lived_s: float) -> float:
        """The pause before the next restart of a process that lived ``lived_s``."""
        if lived_s >= self.healthy_after_s or not self.pauses:
            return self.first_backoff_s
        return min(self.pauses[-1] * 2, self.max_backoff_s)

    def _watch(self) -> None:
        while True:
            started = time.monotonic()
            code = self.proc.wait()  # reaps it
            if self._stopping.is_set():
                return
            if code == -signal.SIGINT and self._stopping.wait(CTRL_C_GRACE_S):
                return  # the terminal's Ctrl-C reached the whole process group: `mol up` is stopping too
            pause = self.next_pause(time.monotonic() - started)
            self.pauses.append(pause)
            where = f" (its log: {self.log})" if self.log else ""
            self.say(f"worker exited ({code}); restarting it in {pause:g} s{where}")
            if self._stopping.wait(pause):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = self._spawn()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stops supervising, sends ``sig`` to the process and waits ``stop_timeout_s`` for it (then SIGKILL);
        returns its exit code (None if it was never started)."""
        self._stopping.set()
        with self._lock:
            proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.say(f"worker did not stop within {self.stop_timeout_s:g} s; killing it")
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)
        if self._out is not None:
            self._out.close()
        return proc.returncode
