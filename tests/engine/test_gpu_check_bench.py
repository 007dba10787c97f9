"""bench/gpu_check.py: without CUDA it says so in one JSON line and exits 0; its peak-FLOPs table lookup."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def load_bench():
    import gpu_check

    return gpu_check


def test_without_cuda_it_prints_why_and_exits_0(monkeypatch, capsys):
    bench = load_bench()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["gpu_check"] == "skipped" and "needs CUDA" in line["reason"]


def test_peak_flops_takes_the_most_specific_device_name():
    bench = load_bench()
    assert bench.peak_flops("NVIDIA H200") == 989e12
    assert bench.peak_flops("NVIDIA H100 PCIe") == 756e12 and bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("NVIDIA L40S") == 362e12 and bench.peak_flops("NVIDIA A10G") == 70e12
    assert bench.peak_flops("Some Future GPU") is None


def test_smoke_runs_every_measurement_on_the_cpu(monkeypatch, capsys):
    """The GPU check's whole code path (variants, chunk sweep, profile, step-0 KL, goals) runs on the CPU with a tiny
    model, so a lent GPU's few minutes are not lost to a bug in the script."""
    bench = load_bench()
    monkeypatch.setattr(bench, "CHUNK_SWEEP", (16,))  # one point: the sweep is measure() again
    assert bench.main(["--smoke"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["smoke"] is True and line["device"] == "cpu"
    for name in ("cpt", "cpt_eager", "mol_exact", "mol_cached"):
        assert line[name]["tokens_per_s"] > 0 and line[name]["loss"] > 0
    assert line["chunk_sweep"]["16"] > 0 and line["mol_exact"]["chunk"] > 16
    assert line["profile_mol_exact"]["top_kernels"] and line["step0_kl_bf16"] <= 1e-6
    assert set(line["goals"]) == {"cpt_mfu", "mol_exact_cpt_throughput", "cached_cpt_throughput", "step0_kl_bf16"}
    assert all(goal["met"] is None for goal in line["goals"].values())  # a smoke run judges nothing
