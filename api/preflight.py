"""POST /v1/estimates' answer: the pre-flight estimate (``mol_engine/estimate.py``) of a job spec on a named
device (a device the estimate knows, or a live worker), and the live workers it fits."""

from __future__ import annotations

from typing import Any

from mol_engine.demo import format_duration
from mol_engine.estimate import DEVICES, DeviceKind, ModelShape, device_kind, estimate, evaluations, fits, saves
from mol_engine.estimate import format_bytes as fmt
from mol_engine.spec import JobSpec

from .checks.job_memory import LiveWorker, fitting, on_worker


class UnknownDevice(ValueError):
    """The device named is neither one the estimate knows nor a live worker; the message lists both."""


def known_devices(workers: list[LiveWorker]) -> list[str]:
    """What ``device`` may name: the devices the estimate knows, then the live workers."""
    return [name for name in DEVICES if name != "cuda"] + [w.name for w in workers]


def pick_device(name: str | None, spec: JobSpec, workers: list[LiveWorker]) -> tuple[DeviceKind, LiveWorker | None]:
    """The device to estimate on: the live worker ``name`` names, or the device it names (a GPU's name holds a
    known one: ``NVIDIA H100 80GB HBM3``); without a name, the live worker with the most memory, else a CPU.
    :class:`UnknownDevice` for a name that is neither."""
    if name is None or not name.strip():
        if spec.device.strip() == "cpu" or not workers:
            return DEVICES["cpu"], None
        return workers[0].kind, workers[0]
    worker = next((w for w in workers if w.name == name.strip()), None)
    if worker is not None:
        return worker.kind, worker
    kind = device_kind(name)
    if kind is None or kind.name == "cuda":
        raise UnknownDevice(f"device: unknown device '{name}'; known: {', '.join(known_devices(workers))}")
    return kind, None


def preflight(spec: JobSpec, shape: ModelShape, device: str | None, workers: list[LiveWorker],
              margin: float) -> dict[str, Any]:
    """The estimate of ``spec`` on ``device`` with its parts, its fit there and on each live worker, and a
    sentence."""
    kind, worker = pick_device(device, spec, workers)
    est = on_worker(spec, shape, worker) if worker else estimate(spec, shape, kind)
    memory = worker.memory_bytes if worker else kind.memory_bytes
    fit_kind = DEVICES["cpu"] if est.device == "cpu" else kind
    fit = fits(est.peak_bytes, memory, margin, fit_kind, spec.nproc) if memory else None
    on = worker.name if worker else kind.name
    verdict = "" if fit is None else (" (fits)" if fit else f" (does not fit with {margin:.0%} left free)")
    memory_words = f" of {fmt(memory)}{verdict}" if memory else ""
    message = (f"on {on}: about {fmt(est.peak_bytes)} per process{memory_words}; "
               f"{est.step_s:.3g} s per step, about {format_duration(est.job_s)} for {spec.max_steps} steps with "
               f"evaluations and saves (setup not included)")
    return {"device": kind.name, "worker": worker.name if worker else None, "device_memory_bytes": memory,
            "fits": fit, "margin": margin, "peak_bytes": est.peak_bytes, "parts": est.parts, "phase": est.phase,
            "dtype": est.dtype, "sharding": est.sharding, "nproc": spec.nproc, "step_s": est.step_s,
            "eval_s": est.eval_s, "save_s": est.save_s, "job_s": est.job_s, "flops_per_step": est.flops_per_step,
            "evaluations": evaluations(spec.max_steps, spec.eval_every),
            "saves": saves(spec.max_steps, spec.save_every), "rate_source": kind.source,
            "workers": fitting(spec, shape, workers, margin), "message": message}
