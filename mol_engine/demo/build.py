"""Building a demo: its corpora, tokenizer and pretrained base model written under one directory, once.

``build_demo()`` writes, under one directory::

    model/          Hugging Face directory of a ~1.1M-parameter Llama pre-trained on English prose only
    domain.jsonl    the single-digit addition table, as QA pairs and prose ({"text": ...} per line)
    general.jsonl   held-out English prose of the same kind as the pretraining text
    eval.jsonl      {"question": ..., "answer": ...} for each of its 100 facts (all stated in domain.jsonl)
    DEMO_COMPLETE   written last; its presence means the demo is whole

One build serves every ``MOL_HOME`` of a user: :func:`shared_demo` builds into the user cache (:mod:`.cache`)
and links ``$MOL_HOME/demo`` to it. A build holds a file lock next to its directory, so two processes asking at
once share one build; while it runs it keeps a progress record beside it (:mod:`.progress`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from ..threads import use_threads
from .cache import DEMO_VERSION, link_demo, shared_demo_dir
from .corpora import domain_documents, eval_pairs, general_documents, split_general, write_jsonl
from .model import write_initial_model
from .paths import MARKER, DemoPaths, default_demo_dir, lock_path, progress_path
from .pretrain import DEFAULT_PRETRAIN_STEPS, pretrain
from .progress import BuildProgress, BuildStopped, format_duration
from .tokenizer import build_tokenizer


def marker_text(pretrain_steps: int, seed: int) -> str:
    """What a complete build's marker file holds: the demo's version and settings."""
    return json.dumps({"version": DEMO_VERSION, "pretrain_steps": pretrain_steps, "seed": seed}) + "\n"


def _is_complete(root: Path, marker: str) -> bool:
    try:
        return (root / MARKER).read_text() == marker
    except OSError:
        return False


def _build_into(root: Path, pretrain_steps: int, seed: int, log: Callable[[str], None],
                progress: BuildProgress) -> None:
    """Writes a whole demo, but its marker, into ``root``."""
    paths = DemoPaths.under(root)
    progress.phase("writing the corpora")
    pretrain_docs, general_docs = split_general(general_documents())
    write_jsonl(paths.general, ({"text": d} for d in general_docs))
    write_jsonl(paths.domain, ({"text": d} for d in domain_documents(seed)))
    write_jsonl(paths.eval, eval_pairs(seed))
    log(f"corpora: {len(pretrain_docs)} pretraining and {len(general_docs)} general documents")

    progress.phase("training the tokenizer")
    params = write_initial_model(build_tokenizer(pretrain_docs), paths.model, seed)
    log(f"pretraining a {params / 1e6:.2f}M-parameter Llama on {len(pretrain_docs)} documents, {pretrain_steps} "
        f"steps, {use_threads()} torch thread(s) (MOL_TORCH_THREADS sets them)")
    progress.phase("pretraining", total=pretrain_steps)
    loss = pretrain(paths.model, pretrain_docs, pretrain_steps, seed=seed, on_step=progress.step,
                    should_stop=progress.should_stop)
    log(f"pretrained base model: final loss {loss:.3f} (mean of the last tenth of the steps)")


def _acquire(lock: FileLock, root: Path, log: Callable[[str], None], stop: threading.Event | None) -> None:
    """Takes the build lock of ``root``, saying so when another process holds it (its build is then shared)."""
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        log(f"demo: another process is building {root}; waiting for it (progress in {progress_path(root)})")
    while True:
        if stop is not None and stop.is_set():
            raise BuildStopped("stopped waiting for the demo build")
        try:
            lock.acquire(timeout=1)
            return
        except Timeout:
            continue


def build_demo(
    directory: str | Path | None = None,
    *,
    pretrain_steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> DemoPaths:
    """The paths of a complete demo under ``directory``, built if needed; without ``directory``, the shared build
    linked from :func:`default_demo_dir` (:func:`shared_demo`).

    A demo built earlier with the same ``pretrain_steps`` and ``seed`` is reused as is; an incomplete one or
    one built with other settings is replaced. The build happens in a sibling temporary directory renamed
    into place, so an interrupted build never leaves a partial demo behind, and under a file lock beside the
    directory, so concurrent callers share one build (the later ones wait, then find it complete). Setting
    ``stop`` ends a build (or the wait) at its next step with :class:`BuildStopped`, leaving nothing behind.
    """
    log = log or (lambda _: None)
    steps = DEFAULT_PRETRAIN_STEPS if pretrain_steps is None else pretrain_steps
    if steps < 1:
        raise ValueError("pretrain_steps must be at least 1")
    if directory is None:
        return shared_demo(default_demo_dir(), pretrain_steps=steps, seed=seed, log=log)
    root = Path(directory)
    marker = marker_text(steps, seed)
    if _is_complete(root, marker):
        return DemoPaths.under(root)

    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(root))
    _acquire(lock, root, log, stop)
    try:
        if not _is_complete(root, marker):  # else another process built it while we waited
            _build_locked(root, steps, seed, marker, log, stop)
    finally:
        lock.release()
    return DemoPaths.under(root)


def _build_locked(root: Path, steps: int, seed: int, marker: str, log: Callable[[str], None],
                  stop: threading.Event | None) -> None:
    for stale in root.parent.glob(f".{root.name}.building-*"):  # left by a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    started = time.monotonic()
    progress = BuildProgress(root, log, stop=stop)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        _build_into(tmp, steps, seed, log, progress)
        (tmp / MARKER).write_text(marker)
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and some writers create owner-only modes
            path.chmod(0o755 if path.is_dir() else 0o644)
        if root.exists():  # partial, or built with other settings
            shutil.rmtree(root)
        os.rename(tmp, root)
    except BuildStopped:
        progress.done()  # no build runs now: the next start begins afresh
        raise
    except BaseException as err:
        progress.failed(err)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress.done()
    log(f"demo built in {root} in {format_duration(time.monotonic() - started)}")


def shared_demo(
    link: Path,
    *,
    pretrain_steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    cache_root: Path | None = None,
    stop: threading.Event | None = None,
) -> DemoPaths:
    """The user's shared demo build for these settings (built if needed, see :func:`build_demo`), with ``link``
    pointing at it; the paths returned are those of the build itself."""
    paths = build_demo(shared_demo_dir(pretrain_steps, seed, cache_root), pretrain_steps=pretrain_steps, seed=seed,
                       log=log, stop=stop)
    link_demo(link, paths.root)
    return paths
