"""Where a demo's parts live: the files of a build, and the lock and progress files kept beside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MARKER = "DEMO_COMPLETE"  # written last into a build; its presence means the demo is whole


@dataclass(frozen=True)
class DemoPaths:
    """Where the parts of a built demo live."""

    root: Path
    model: Path
    domain: Path
    general: Path
    eval: Path

    @classmethod
    def under(cls, root: str | Path) -> DemoPaths:
        """The paths of a demo rooted at ``root`` (nothing is checked or built)."""
        root = Path(root)
        return cls(root, root / "model", root / "domain.jsonl", root / "general.jsonl", root / "eval.jsonl")


def default_demo_dir() -> Path:
    """``$MOL_HOME/demo``, or ``.mol/demo`` when ``MOL_HOME`` is unset."""
    return Path(os.environ.get("MOL_HOME", ".mol")) / "demo"


def lock_path(root: Path) -> Path:
    """The file lock a build of ``root`` holds: ``.<name>.lock`` beside it."""
    return root.with_name(f".{root.name}.lock")


def progress_path(root: Path) -> Path:
    """The progress record of a build of ``root``: ``.<name>.progress.json`` beside it."""
    return root.with_name(f".{root.name}.progress.json")
