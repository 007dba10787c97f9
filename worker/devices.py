"""What a worker's jobs train on, in words and memory, for GET /v1/workers: found without importing torch (which
would cost the worker seconds at every start and hundreds of MB it never uses itself; the runner it starts
imports it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path


def visible_gpus(env: Mapping[str, str]) -> list[str] | None:
    """The GPU indices ``CUDA_VISIBLE_DEVICES`` names (``[]``: none, so CPU); None when it is unset (all GPUs)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    ids = [part.strip() for part in value.split(",") if part.strip()]
    return [] if ids[:1] == ["-1"] else ids


def gpu_names() -> dict[str, str]:
    """index -> name of each GPU nvidia-smi lists; empty when it is not installed or fails (no NVIDIA driver)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = (line.split(",", 1) for line in out.splitlines() if "," in line)
    return {index.strip(): name.strip() for index, name in rows}


def describe_device(env: Mapping[str, str] | None = None, names: Mapping[str, str] | None = None) -> str:
    """``cuda: 2 x NVIDIA H100 (GPUs 0,1)``, ``cuda (GPUs 0,1)`` when their names are unknown, or ``cpu (N cores)``:
    what a job with ``device: auto`` on this worker trains on. ``names`` (default: :func:`gpu_names`) by index."""
    env = os.environ if env is None else env
    visible = visible_gpus(env)
    if visible == []:
        return f"cpu ({os.cpu_count() or 1} cores)"
    names = gpu_names() if names is None else names
    ids = list(names) if visible is None else visible
    if not ids:
        return f"cpu ({os.cpu_count() or 1} cores)"
    kinds = list(dict.fromkeys(names[i] for i in ids if i in names))
    what = f"{len(ids)} x {kinds[0]}" if len(kinds) == 1 and all(i in names for i in ids) else ", ".join(kinds)
    return f"cuda: {what} (GPUs {','.join(ids)})" if what else f"cuda (GPUs {','.join(ids)})"


def gpu_memory_mib() -> dict[str, int]:
    """index -> total memory (MiB) of each GPU nvidia-smi lists; empty when it is not installed or fails."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = (line.split(",", 1) for line in out.splitlines() if "," in line)
    return {index.strip(): int(mib.strip()) for index, mib in rows if mib.strip().isdigit()}


def host_memory_mib(cgroup: Path = Path("/sys/fs/cgroup/memory.max")) -> int | None:
    """The host's RAM in MiB, or the container's cgroup limit when lower; None when neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = cgroup.read_text().strip()
        total = min(total, int(limit)) if limit.isdigit() else total
    except OSError:
        pass
    return total // 2**20


def device_memory_mib(env: Mapping[str, str] | None = None, memories: Mapping[str, int] | None = None,
                      host: int | None = None) -> int | None:
    """The memory one process of a job has on this worker, in MiB, for the pre-flight estimate's fit: the
    smallest visible GPU's total memory (each process takes one GPU), or the host's RAM (:func:`host_memory_mib`)
    when jobs train on the CPU (its processes share it); None when unknown. ``memories`` (default:
    :func:`gpu_memory_mib`) by index."""
    env = os.environ if env is None else env
    visible = visible_gpus(env)
    if visible != []:
        memories = gpu_memory_mib() if memories is None else memories
        ids = list(memories) if visible is None else visible
        known = [memories[i] for i in ids if i in memories]
        if known:
            return min(known)
        if ids and visible is not None:
            return None  # GPUs named, their memory unknown
    return host_memory_mib() if host is None else host
