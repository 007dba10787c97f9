"""A demo build's progress: kept in a file beside the build for every process that shows it (``mol up``'s
terminal, ``GET /v1/demo``), read back as a :class:`DemoStatus` with an ETA from the pace of pretraining so far."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .paths import MARKER, progress_path

PROGRESS_EVERY_S = 5.0  # a progress line in the terminal at most this often
PROGRESS_WRITE_S = 1.0  # the progress file rewritten at most this often
STALE_AFTER_S = 600.0  # a progress file not rewritten for this long is a build that died (no step takes that long)


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def eta_seconds(step: int, total: int, pretrain_elapsed_s: float) -> float | None:
    """Seconds left at the pace so far (``step`` of ``total`` pretraining steps done in ``pretrain_elapsed_s``);
    None before the first step. Writing the model afterwards takes well under a second."""
    if step < 1 or total < step:
        return None
    return pretrain_elapsed_s / step * (total - step)


@dataclass(frozen=True)
class DemoStatus:
    """Where a demo stands: ``ready``, ``building`` (with phase, step/total, elapsed and ETA), ``failed`` or
    ``absent`` (not built, and no build running)."""

    state: str
    phase: str | None = None
    step: int = 0
    total: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    error: str | None = None

    @property
    def message(self) -> str:
        if self.state == "ready":
            return "The demo model is ready."
        if self.state == "failed":
            return f"The demo build failed: {self.error}"
        if self.state == "absent":
            return "The demo model is not built: `mol up` or `mol demo` builds it."
        return f"The demo model is being built: {self.progress}."

    @property
    def progress(self) -> str:
        """``pretraining step 120/400, 1 min 05 s elapsed, about 3 min 02 s left`` (or the phase and time)."""
        done = f", {format_duration(self.elapsed_s)} elapsed" if self.elapsed_s is not None else ""
        if self.phase == "pretraining" and self.total:
            left = f", about {format_duration(self.eta_s)} left" if self.eta_s is not None else ""
            return f"pretraining step {self.step}/{self.total}{done}{left}"
        return f"{self.phase or 'starting'}{done}"


def read_status(progress: Mapping | None, complete: bool, now: float) -> DemoStatus:
    """The status a build's progress record (None: no record) and completeness give at time ``now`` (pure)."""
    if complete:
        return DemoStatus("ready")
    if not progress or now - progress.get("updated", 0) > STALE_AFTER_S:
        return DemoStatus("absent")
    if progress.get("phase") == "failed":
        return DemoStatus("failed", error=progress.get("error"))
    step, total = int(progress.get("step", 0)), int(progress.get("total", 0))
    pretrain_started = progress.get("pretrain_started")
    eta = eta_seconds(step, total, now - pretrain_started) if pretrain_started else None
    return DemoStatus("building", progress.get("phase"), step, total, now - progress["started"], eta)


def demo_status(link: Path, target: Path, now: float | None = None) -> DemoStatus:
    """The status of the demo a ``MOL_HOME`` uses: ready when ``link`` (``$MOL_HOME/demo``) holds a whole demo;
    building while ``target`` (its shared build) is whole but not linked yet (its corpora being registered);
    else what the build of ``target`` reports in its progress file."""
    if (link / MARKER).is_file():
        return DemoStatus("ready")
    if (target / MARKER).is_file():
        return DemoStatus("building", "registering the corpora")
    try:
        progress = json.loads(progress_path(target).read_text())
    except (OSError, ValueError):
        progress = None
    return read_status(progress, False, time.time() if now is None else now)


def announce_build(root: Path) -> None:
    """Records a build of ``root`` as starting (so :func:`demo_status` says ``building`` from the first moment),
    unless a build's record is already there and live: a running build's progress is never overwritten."""
    path = progress_path(root)
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = None
    if read_status(current, False, time.time()).state == "building":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    BuildProgress(root, lambda _: None).phase("starting")


class BuildStopped(Exception):
    """The build was asked to stop (``mol up`` ending while it builds in the background)."""


class BuildProgress:
    """A build's progress, kept in its progress file (for every process that shows it) and logged as one line
    every :data:`PROGRESS_EVERY_S` seconds, and at each new phase; raises :class:`BuildStopped` at the next phase
    or step once ``stop`` is set."""

    def __init__(self, root: Path, log: Callable[[str], None], clock: Callable[[], float] = time.time,
                 stop: threading.Event | None = None):
        self.path, self.log, self.clock, self.stop = progress_path(root), log, clock, stop
        now = clock()
        self.record: dict = {"phase": "starting", "step": 0, "total": 0, "started": now, "updated": now,
                             "pid": os.getpid()}
        self.written = self.logged = float("-inf")

    def phase(self, name: str, total: int = 0) -> None:
        self._check_stop()
        self.record |= {"phase": name, "step": 0, "total": total}
        if name == "pretraining":
            self.record["pretrain_started"] = self.clock()
        self._publish(force=True)

    def step(self, step: int, loss: float) -> None:
        self._check_stop()
        self.record |= {"step": step, "loss": loss}
        self._publish(force=step == self.record["total"])

    def failed(self, error: BaseException) -> None:
        self.record |= {"phase": "failed", "error": f"{type(error).__name__}: {error}"}
        self._publish(force=True)

    def done(self) -> None:
        self.path.unlink(missing_ok=True)

    def should_stop(self) -> bool:
        """Whether the build was asked to stop."""
        return self.stop is not None and self.stop.is_set()

    def _check_stop(self) -> None:
        if self.should_stop():
            raise BuildStopped("the demo build was stopped")

    def _publish(self, force: bool) -> None:
        now = self.clock()
        self.record["updated"] = now
        if force or now - self.written >= PROGRESS_WRITE_S:
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.record))
            os.replace(tmp, self.path)
            self.written = now
        if force or now - self.logged >= PROGRESS_EVERY_S:
            self.log(f"demo: {read_status(self.record, False, now).progress}")
            self.logged = now
