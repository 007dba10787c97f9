"""The thread-count rule: cores not busy, at least one, at most the physical cores; the variables override it."""

from __future__ import annotations

from mol_engine.threads import compute_threads, physical_cores, threads_for


def test_busy_cores_are_left_to_their_processes() -> None:
    assert threads_for(cores=2, load=0.2) == 2  # a quiet machine: every core
    assert threads_for(cores=2, load=0.7) == 1
    assert threads_for(cores=2, load=9.6) == 1  # the busy 2-core machine of bench/threads.py: never 0
    assert threads_for(cores=8, load=3.4) == 5
    assert threads_for(cores=8, load=-1) == 8  # never more than the cores


def test_the_variables_override_the_rule() -> None:
    assert threads_for(cores=2, load=9.0, override="4") == 4
    assert threads_for(cores=2, load=0.0, override="0") == 2  # not a usable count: the rule decides
    assert compute_threads({"MOL_TORCH_THREADS": "3", "OMP_NUM_THREADS": "1"}) == 3
    assert compute_threads({"OMP_NUM_THREADS": "1"}) == 1
    assert 1 <= compute_threads({}) <= physical_cores()
