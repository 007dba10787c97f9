"""The user cache of demo builds: one build per set of what decides its bytes, shared by every ``MOL_HOME``.

A build lives in ``<cache root>/demo-<key>`` (:func:`shared_demo_dir`), the key naming the demo's version, its
settings and the library versions that decide its bytes (:func:`demo_key`); ``$MOL_HOME/demo`` is a link to it
(:func:`link_demo`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from .pretrain import DEFAULT_PRETRAIN_STEPS

DEMO_VERSION = "mol-demo-2"  # -2: pretrained through mol_engine.train.train() (other bytes than -1's own loop)
CACHE_ENV = "MOL_DEMO_CACHE"  # the user cache directory of demo builds, overridden (tests point it at a tmp dir)


def build_versions() -> dict[str, str]:
    """The versions that decide a build's bytes: Python's minor (the corpus), torch, transformers, tokenizers."""
    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}",
            **{package: version(package) for package in ("torch", "transformers", "tokenizers")}}


def demo_key(pretrain_steps: int, seed: int, versions: Mapping[str, str]) -> str:
    """12 hex digits naming one build: the demo's version, its settings and ``versions`` (build_versions())."""
    what = {"demo": DEMO_VERSION, "pretrain_steps": pretrain_steps, "seed": seed, **versions}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def demo_cache_root(env: Mapping[str, str] | None = None) -> Path:
    """``$MOL_DEMO_CACHE``, else ``$XDG_CACHE_HOME/mol-studio``, else ``~/.cache/mol-studio``."""
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "mol-studio"


def shared_demo_dir(pretrain_steps: int | None = None, seed: int = 0, cache_root: Path | None = None) -> Path:
    """Where the shared build of these settings lives: ``<cache root>/demo-<key>``."""
    steps = DEFAULT_PRETRAIN_STEPS if pretrain_steps is None else pretrain_steps
    return (cache_root or demo_cache_root()) / f"demo-{demo_key(steps, seed, build_versions())}"


def link_demo(link: Path, target: Path) -> None:
    """Points ``link`` (``$MOL_HOME/demo``) at ``target`` in one step; a directory there (a demo built in place by
    an older version) is moved aside and removed."""
    if link.is_symlink() and link.readlink() == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():
        aside = link.with_name(f".{link.name}.old-{os.getpid()}")
        os.rename(link, aside)
        shutil.rmtree(aside, ignore_errors=True)
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
