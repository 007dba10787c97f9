"""bench/numerics.py keeps working against the engine (its cheap figures, at a smaller size; the step-0 KL it
prints is tested in test_lean_reference.py)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "numerics.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("numerics", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_numerics_bench_figures_meet_their_goals():
    bench = load_bench()
    one, many = (bench.head_grad_relerr(chunks, positions=1024, vocab=256) for chunks in (1, 256))
    assert bench.GOALS["head_grad_relerr_ratio"](many / one), (one, many)
    assert bench.GOALS["forward_cached_grad_finite"](bench.forward_cached_grad_finite())
