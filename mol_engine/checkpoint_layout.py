"""Where a run's checkpoints are and which are complete: names and paths only, no tensors.

:mod:`mol_engine.checkpoint` writes and reads the checkpoints; these rules about their directories are apart so
that whoever only lists or serves them (the API) does not import torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

STATE_FILE = "trainer_state.json"  # written last: a step-N directory holding it is complete
SHARDS = "dcp"  # the torch.distributed.checkpoint directory of an FSDP checkpoint
RNG_DIR = "rng"  # one RNG file per rank in an FSDP checkpoint
_STEP_DIR = re.compile(r"step-(\d+)")


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints`` (``step-N`` holding its state file), oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir()
             if (m := _STEP_DIR.fullmatch(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose state file reads back, or None."""
    for path in reversed(checkpoint_dirs(out_dir)):
        try:
            json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError):  # truncated by hand or by a foreign writer: never resume from it
            continue
        return path
    return None


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint written under FSDP: DCP shards, and no weights in ``model/``."""
    return (Path(path) / SHARDS / ".metadata").is_file()


def step_of(path: Path) -> int:
    """The step of a ``step-N`` checkpoint directory."""
    return int(_STEP_DIR.fullmatch(path.name)[1])
