"""How many CPU threads torch gets: one rule for the demo build and for training.

torch's default is one intra-op thread per physical core. On a machine where other processes already keep
the cores busy, those threads wait on each other at every operator's barrier while the scheduler gives them
turns, and a step can take several times longer than on one thread (bench/threads.py measures it). The rule:
as many threads as cores not already busy (the 1-minute load average, as ``uptime`` shows), at least one and
at most the physical cores. ``MOL_TORCH_THREADS``, else ``OMP_NUM_THREADS``, overrides it (torchrun sets
``OMP_NUM_THREADS=1`` for the ranks of a several-process job). A job's runner is a fresh process, so each job
decides when it starts.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping

OVERRIDES = ("MOL_TORCH_THREADS", "OMP_NUM_THREADS")


def physical_cores() -> int:
    """Physical cores this process may use (psutil when installed, else the logical CPUs it may run on)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        return max(1, min(usable, psutil.cpu_count(logical=False) or usable))
    except ImportError:
        return max(1, usable)


def threads_for(cores: int, load: float, override: str | None = None) -> int:
    """The rule: ``override`` when it is a positive integer, else the ``cores`` not busy at this ``load``
    (the load average, rounded up: 0.3 busy cores is one core taken), at least 1."""
    if override is not None and override.strip().isdigit() and int(override) > 0:
        return int(override)
    return max(1, min(cores, cores - math.ceil(load - 0.5)))


def compute_threads(env: Mapping[str, str] | None = None) -> int:
    """The number of torch threads for work starting now on this machine (see the module's docstring)."""
    env = os.environ if env is None else env
    override = next((env[name] for name in OVERRIDES if env.get(name, "").strip()), None)
    return threads_for(physical_cores(), os.getloadavg()[0], override)


@functools.cache
def use_threads() -> int:
    """Sets torch's intra-op threads by :func:`compute_threads` once per process (at its first build or run, so
    the runs of one process use one count and give the same numbers); returns the number set."""
    import torch

    threads = compute_threads()
    torch.set_num_threads(threads)
    return threads
