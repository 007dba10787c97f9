"""Whether a job spec fits a live worker's memory, by the pre-flight estimate (``mol_engine/estimate.py``), and
what to change when it fits none: what POST /v1/jobs checks and POST /v1/estimates reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mol_engine.estimate import (
    DEMO_SHAPE_CONFIG,
    DEVICES,
    DeviceKind,
    Estimate,
    EstimateError,
    ModelShape,
    device_kind,
    estimate,
    fits,
    format_bytes,
    model_shape,
    read_model_shape,
)
from mol_engine.spec import JobSpec
from store.db import WorkerSeen, utcnow
from store.leases import worker_alive_within_s
from store.settings import Settings


@dataclass(frozen=True)
class LiveWorker:
    """A worker alive now that advertises its memory: its name, device (words and kind), processes, MiB."""

    name: str
    device: str
    kind: DeviceKind
    capacity: int
    memory_bytes: int


def live_workers(db: Session, settings: Settings) -> list[LiveWorker]:
    """The workers seen within the lease timeout that advertise a device and memory, the most memory first."""
    since = utcnow() - timedelta(seconds=worker_alive_within_s(settings))
    rows = db.scalars(select(WorkerSeen).where(WorkerSeen.last_seen >= since, WorkerSeen.memory_mib.is_not(None)))
    workers = [LiveWorker(w.name, w.device or "cpu", device_kind(w.device or "cpu") or device_kind("cuda"),
                          w.capacity, w.memory_mib * 2**20) for w in rows]
    return sorted(workers, key=lambda w: (-w.memory_bytes, w.name))


def shape_for(spec: JobSpec, models: dict[str, Path]) -> ModelShape | None:
    """The spec's base model's shape from its config.json (the demo's known one before it is built); None when the
    model is not one of ``models`` (the reference check names it)."""
    path = models.get(spec.base_model)
    if path is None:
        return None
    if spec.base_model == "demo" and not (path / "config.json").is_file():
        return model_shape(DEMO_SHAPE_CONFIG)
    return read_model_shape(path)


def on_worker(spec: JobSpec, shape: ModelShape, worker: LiveWorker) -> Estimate:
    """The estimate of ``spec`` on ``worker``'s device (its memory sizes the loss chunks, as the engine's do)."""
    kind = worker.kind
    if kind.kind == "cuda":
        kind = DeviceKind(kind.name, kind.kind, worker.memory_bytes, kind.flops, kind.source)
    return estimate(spec, shape, kind)


def fitting(spec: JobSpec, shape: ModelShape, workers: Sequence[LiveWorker], margin: float) -> list[dict[str, Any]]:
    """Each worker that could run ``spec`` (capacity for its processes) with its estimate's peak and whether it
    fits."""
    rows = []
    for worker in workers:
        if worker.capacity < spec.nproc:
            continue
        est = on_worker(spec, shape, worker)
        kind = DEVICES["cpu"] if est.device == "cpu" else worker.kind
        rows.append({"name": worker.name, "device": worker.device, "memory_bytes": worker.memory_bytes,
                     "peak_bytes": est.peak_bytes,
                     "fits": fits(est.peak_bytes, worker.memory_bytes, margin, kind, spec.nproc)})
    return rows


def _changes(spec: JobSpec, largest_capacity: int) -> list[tuple[str, dict[str, Any]]]:
    """The single changes that lower a spec's peak, each as (what it says, the fields it sets)."""
    changes = []
    smallest = 1 if spec.method == "domain_only" else 2
    batch = spec.batch_size // 2
    while batch >= smallest:
        accum = spec.grad_accum * -(-spec.batch_size // batch)
        changes.append((f"batch_size {spec.batch_size} -> {batch} (grad_accum {spec.grad_accum} -> {accum} keeps the "
                        f"step's rows)", {"batch_size": batch, "grad_accum": accum}))
        batch //= 2
    if not spec.gradient_checkpointing:
        changes.append(("gradient_checkpointing: true", {"gradient_checkpointing": True}))
    if spec.finetune == "full":
        changes.append(("finetune: lora", {"finetune": "lora"}))
    if spec.method == "mol" and spec.reference == "exact" and spec.finetune == "full":
        changes.append(("reference: cached", {"reference": "cached"}))
    nproc = spec.nproc * 2
    while nproc <= largest_capacity:
        changes.append((f"nproc: {nproc}", {"nproc": nproc}))
        nproc *= 2
    return changes


def suggestions(spec: JobSpec, shape: ModelShape, workers: Sequence[LiveWorker], margin: float) -> list[str]:
    """Each single change of :func:`_changes` that makes ``spec`` fit a live worker, with its estimate: for
    batch_size only the largest that fits."""
    found, batch_found = [], False
    for words, update in _changes(spec, max((w.capacity for w in workers), default=1)):
        if "batch_size" in update and batch_found:
            continue
        changed = spec.model_copy(update=update)
        fit = next((row for row in fitting(changed, shape, workers, margin) if row["fits"]), None)
        if fit:
            batch_found |= "batch_size" in update
            found.append(f"{words} fits ({format_bytes(fit['peak_bytes'])} per process on {fit['name']}, "
                         f"{format_bytes(fit['memory_bytes'])})")
    return found


def memory_problems(db: Session, spec: JobSpec, models: dict[str, Path], settings: Settings) -> list[str]:
    """Why ``spec`` fits no live worker's memory, naming the fields to change; nothing when it fits one, when no
    live worker advertises its memory (workers may start on demand) or none has the processes it asks for (the
    nproc check says so), or when its model's shape cannot be read (the reference check names the model)."""
    workers = live_workers(db, settings)
    try:
        shape = shape_for(spec, models)
    except EstimateError:
        return []
    if shape is None or not workers:
        return []
    rows = fitting(spec, shape, workers, settings.estimate_memory_margin)
    if not rows or any(row["fits"] for row in rows):
        return []
    best = min(rows, key=lambda row: row["peak_bytes"] / row["memory_bytes"])
    est = on_worker(spec, shape, next(w for w in workers if w.name == best["name"]))
    parts = ", ".join(f"{name} {format_bytes(n)}" for name, n in est.parts.items() if n)
    ways = suggestions(spec, shape, workers, settings.estimate_memory_margin)
    advice = ("change one of: " + "; ".join(ways)) if ways else (
        "no single change of batch_size, gradient_checkpointing, finetune, reference or nproc fits: combine them, "
        "or add a worker with more memory")
    return [f"batch_size, gradient_checkpointing, finetune, reference, nproc: the job needs about "
            f"{format_bytes(best['peak_bytes'])} per process ({parts}), more than any live worker holds with "
            f"{settings.estimate_memory_margin:.0%} left free (the closest: {best['name']}, "
            f"{format_bytes(best['memory_bytes'])}); {advice}"]
