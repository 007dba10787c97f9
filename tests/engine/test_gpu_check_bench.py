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
