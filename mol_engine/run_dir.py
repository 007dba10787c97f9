"""The layout of a run directory, in one place: names and paths only, no tensors.

A run directory (``mol train --out RUN``; the service's ``<runs>/<job id>``) holds::

    RUN/metrics.jsonl            metric points (:class:`mol_engine.callbacks.JsonlLogger`)
    RUN/events.jsonl             events
    RUN/best.json                the best checkpoint within the budget (:mod:`mol_engine.budget`)
    RUN/checkpoints/step-N/      one checkpoint, complete once it holds ``trainer_state.json``
    RUN/checkpoints/.step-N-*/   a checkpoint being written (removed by the next writer)

``best`` is an alias wherever a checkpoint name is accepted: the checkpoint ``best.json`` names.
:mod:`mol_engine.checkpoint` writes and reads the checkpoints; these rules are apart so that whoever only lists
or serves them (the API) does not import torch. Nothing else spells a checkpoint's name or path: a test greps
the tree for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path, PurePath

STATE_FILE = "trainer_state.json"  # written last: a step-N directory holding it is complete
SHARDS = "dcp"  # the torch.distributed.checkpoint directory of an FSDP checkpoint
RNG_DIR = "rng"  # one RNG file per rank in an FSDP checkpoint
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
BEST_FILE = "best.json"
BEST_NAME = "best"  # the alias of the best checkpoint wherever a checkpoint name is accepted
STEP_NAME_PATTERN = r"step-\d{1,9}"  # what a request may name (bounded: its step is a database integer)
_STEP_PREFIX = "step-"
_STEP_NAME = re.compile(r"step-(\d+)")


def step_name(step: int) -> str:
    """The name of the checkpoint of ``step``: ``step-N``."""
    return f"{_STEP_PREFIX}{int(step)}"


def step_of(name: str | PurePath) -> int | None:
    """The step a checkpoint name (or a path ending in one) stands for; None for anything else (``best``,
    ``step-x``, a temporary ``.step-N-…``)."""
    match = _STEP_NAME.fullmatch(PurePath(name).name)
    return int(match[1]) if match else None


def is_step_name(name: str) -> bool:
    """Whether ``name`` is the name of a checkpoint (``step-N``), not an alias or another file."""
    return step_of(name) is not None


def checkpoint_names(names: Iterable[str]) -> list[str]:
    """The checkpoint names among ``names`` (others dropped), by step, oldest first."""
    return sorted((name for name in names if is_step_name(name)), key=step_of)


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint written under FSDP: DCP shards, and no weights in ``model/``."""
    return (Path(path) / SHARDS / ".metadata").is_file()


class RunDir:
    """One run directory: where each of its files and checkpoints is (see the module's docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def holding(cls, checkpoint: str | Path) -> RunDir | None:
        """The run directory whose checkpoints folder ``checkpoint`` is in, or None when it is in none."""
        folder = Path(checkpoint).parent
        return cls(folder.parent) if folder.name == CHECKPOINTS_DIR else None

    @property
    def checkpoints(self) -> Path:
        """The folder of the checkpoints."""
        return self.path / CHECKPOINTS_DIR

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def events_file(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def best_file(self) -> Path:
        return self.path / BEST_FILE

    def checkpoint(self, step: int | str) -> Path:
        """The directory of the checkpoint of ``step`` (an int, or a ``step-N`` name), whether or not it exists.
        Any other name is a ValueError: an alias is resolved first, and no name reaches outside the folder."""
        if isinstance(step, str):
            if not is_step_name(step):
                raise ValueError(f"{step!r} is not a checkpoint name (step-N)")
            step = step_of(step)
        return self.checkpoints / step_name(step)

    def checkpoint_dirs(self) -> list[Path]:
        """Complete checkpoints (``step-N`` holding its state file), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [path for path in self.checkpoints.iterdir() if is_step_name(path.name)
                 and (path / STATE_FILE).is_file()]
        return sorted(found, key=step_of)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint whose state file reads back, or None."""
        for path in reversed(self.checkpoint_dirs()):
            try:
                json.loads((path / STATE_FILE).read_text())
            except (OSError, ValueError):  # truncated by hand or by a foreign writer: never resume from it
                continue
            return path
        return None

    def scratch_prefix(self, step: int) -> str:
        """The name prefix of a checkpoint of ``step`` being written: a hidden sibling, renamed when complete."""
        return f".{step_name(step)}-"

    def scratch_dirs(self) -> list[Path]:
        """Checkpoints being written, or left half-written by a killed writer."""
        return sorted(self.checkpoints.glob(f".{_STEP_PREFIX}*")) if self.checkpoints.is_dir() else []
