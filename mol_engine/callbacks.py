"""Callbacks: how a caller (CLI, worker, tests) receives metric points and events, and asks a run to stop."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from .run_dir import RunDir

# The kinds of event a run emits (``on_event``), in about the order a run emits them: its setup (config, the
# token stores, the general text it sampled, the reference cache, a resume), each evaluation (eval, samples,
# drift), each save (checkpoint), a crossed forgetting budget, and its end (succeeded, cancelled or paused)
EngineEventKind = Literal["config", "token-store", "self-sample", "reference-cache", "resumed", "eval", "samples",
                          "drift", "checkpoint", "budget", "succeeded", "cancelled", "paused"]


class Cancelled(Exception):
    """The caller asked the run to stop (``should_stop``) during a long phase before step 1; nothing half-made is
    kept, and :func:`mol_engine.train.train` ends the run as ``cancelled``."""


class Callback:
    """Base class; override what you need. Metric dicts map names like ``train/domain_ce`` to floats."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """A metric point: train metrics after optimizer step ``step``, eval metrics at step 0 and after."""

    def on_event(self, event: dict[str, Any]) -> None:
        """An event: ``{"step", "kind", "message", ...}``, ``kind`` one of :data:`EngineEventKind`."""

    def on_rewind(self, step: int) -> None:
        """The run restarts after ``step`` (its newest checkpoint; -1 for none): forget points past it."""

    def should_stop(self) -> bool:
        """Return True to cancel the run; checked after every optimizer step, and between the batches of the long
        phases before step 1 (self-sampling, tokenizing, caching the reference)."""
        return False

    def should_pause(self) -> bool:
        """Return True to pause the run: it saves a checkpoint at the step just taken and ends ``paused``, to be
        continued exactly by a run with ``resume``. Checked after every optimizer step that no one asked to stop
        (a pause asked before step 1 waits for it)."""
        return False


class CallbackList(Callback):
    """Fans every call out to several callbacks; stops when any of them asks to."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_metrics(step, metrics)

    def on_event(self, event: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_event(event)

    def on_rewind(self, step: int) -> None:
        for cb in self.callbacks:
            cb.on_rewind(step)

    def should_stop(self) -> bool:
        return any(cb.should_stop() for cb in self.callbacks)

    def should_pause(self) -> bool:
        return any(cb.should_pause() for cb in self.callbacks)


class JsonlLogger(Callback):
    """Appends metric points to ``metrics.jsonl`` and events to ``events.jsonl`` in ``out_dir``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.metrics_path = RunDir(out_dir).metrics_file
        self.events_path = RunDir(out_dir).events_file
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        _append(self.metrics_path, {"step": step, **metrics})

    def on_event(self, event: dict[str, Any]) -> None:
        _append(self.events_path, event)

    def on_rewind(self, step: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(f"{line}\n" for line in kept))


class ConsoleLogger(Callback):
    """Prints a progress line every ``every`` steps, every evaluation, and every event."""

    def __init__(self, every: int = 10, stream: TextIO | None = None) -> None:
        self.every, self.stream = every, stream or sys.stderr

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        is_eval = any(k.startswith("eval/") for k in metrics)
        if is_eval or step % self.every == 0:
            shown = "  ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items())
            print(f"[{'eval' if is_eval else 'step'} {step}] {shown}", file=self.stream, flush=True)

    def on_event(self, event: dict[str, Any]) -> None:
        if event["kind"] not in ("eval",):
            print(f"[{event['kind']}] {event['message']}", file=self.stream, flush=True)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by None: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def strict_dumps(value: Any) -> str:
    """``value`` as standard JSON, non-finite floats written as null."""
    return json.dumps(json_safe(value), allow_nan=False)


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(strict_dumps(record) + "\n")
