"""bench/gpu_check.py: without CUDA it says so in one JSON line and exits 0; its peak-FLOPs table lookup."""

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
