"""The models a job may name: ``demo`` (the in-tree demo, built once per demo cache) and each Hugging Face model
directory under ``MOL_MODELS_DIR``, by directory name. The API lists and checks them; workers resolve them to paths."""

from __future__ import annotations

import json
from pathlib import Path

from .settings import Settings


def demo_dirs(settings: Settings) -> tuple[Path, Path]:
    """(``MOL_HOME/demo``, the shared build it links to once ready: ``<demo cache>/demo-<key>``)."""
    from mol_engine.demo import shared_demo_dir

    return settings.home / "demo", shared_demo_dir(settings.demo_pretrain_steps, cache_root=settings.demo_cache)


def demo_status(settings: Settings):
    """Where this MOL_HOME's demo stands (mol_engine.demo.DemoStatus), None when ``MOL_DEMO_MODEL`` is off."""
    from mol_engine.demo import demo_status as status

    return status(*demo_dirs(settings)) if settings.demo_model else None


def available_models(settings: Settings) -> dict[str, Path]:
    """Model id -> directory: ``demo`` (when built or buildable) and each model directory under MOL_MODELS_DIR."""
    from mol_engine.demo import DemoPaths

    models: dict[str, Path] = {}
    if settings.demo_model:
        models["demo"] = DemoPaths.under(demo_dirs(settings)[0]).model
    if settings.models_dir and settings.models_dir.is_dir():
        for path in sorted(settings.models_dir.iterdir()):
            if (path / "config.json").is_file():
                models[path.name] = path
    return models


def model_type(path: Path) -> str | None:
    """The ``model_type`` in a model directory's config.json (None when unreadable)."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def vocab_size(path: Path) -> int | None:
    """The ``vocab_size`` in a model directory's config.json (None when unreadable)."""
    try:
        return json.loads((path / "config.json").read_text()).get("vocab_size")
    except (OSError, ValueError):
        return None
