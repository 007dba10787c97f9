"""bench/step_cost.py keeps working against the engine: its variants train side by side on the same rows."""

import importlib.util
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "step_cost.py"
sys.path.insert(0, str(BENCH.parent))  # the bench imports its sibling report.py


def load_bench():
    spec = importlib.util.spec_from_file_location("step_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_cost"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_variants_train_side_by_side_on_the_same_rows(tiny_model_dir, corpora, tmp_path):
    bench = load_bench()
    shape = bench.Shape(hidden=32, layers=2, heads=2, intermediate=64, vocab=320, seq_len=32, batch_size=4)
    data = {"domain": str(corpora["domain"]), "general": str(corpora["general"])}
    cpt = bench.EngineVariant(bench.engine_spec(tiny_model_dir, data, shape, "cpt"), tmp_path / "cpt")
    mol = bench.EngineVariant(bench.engine_spec(tiny_model_dir, data, shape, "mol", "lora"), tmp_path / "mol")
    first = bench._cpt_rows(cpt.run).next_batch()
    bare = bench.BareLoop(cpt.run.spec, bench._cpt_rows(cpt.run))
    trainer = bench.HFTrainer(cpt.run.spec, bench._cpt_rows(cpt.run), tmp_path / "hf", n_rows=24)
    assert torch.equal(bare.rows.next_batch().input_ids, first.input_ids)  # the same rows, in the same order
    assert torch.equal(cpt.run.batches.next_batch().input_ids, first.input_ids)
    assert any(torch.equal(trainer.records[0]["input_ids"], row) for row in first.input_ids)

    before = [p.detach().clone() for p in bare.model.parameters()]
    tps = bench.interleaved_throughput({"cpt": cpt, "mol": mol, "bare": bare, "hf": trainer}, shape, rounds=1,
                                       steps=2, log=lambda message: None)
    assert set(tps) == {"cpt", "mol", "bare", "hf"} and all(len(v) == 1 and v[0] > 0 for v in tps.values())
    assert cpt.step == 4 and mol.step == 4  # a warm-up round and a measured round of 2 steps each
    assert any(not torch.equal(a, b) for a, b in zip(before, bare.model.parameters(), strict=True))
    assert bench.held_reference(cpt.run) == "none"  # CPT holds no reference while training, as real runs do

    results: dict = {}
    line = bench.ratio_line("MoL/CPT throughput, LoRA", "mol_cpt_throughput_lora", 80.0, 100.0, "tok/s", results)
    assert results == {"mol_cpt_throughput_lora": 0.8} and line.endswith("target ≥ 0.78: PASS")
    line = bench.ratio_line("MoL cached / CPT peak memory", "mol_cached_cpt_memory_full", 106.0, 100.0, "MiB", results)
    assert line.endswith("target ≤ 1.05: MISS")  # the cached run against a CPT run that holds no reference


@pytest.mark.parametrize(("name", "held"), [("mol_full", "frozen-copy"), ("mol_cached_full", "cached-top-k")])
def test_memory_probe_measures_a_fresh_process(tiny_model_dir, corpora, tmp_path, name, held):
    bench = load_bench()
    shape = bench.Shape(hidden=32, layers=2, heads=2, intermediate=64, vocab=320, seq_len=32, batch_size=4)
    general = shutil.copy(corpora["general"], tmp_path / "general.jsonl")  # its reference cache is built there
    method, finetune, reference = bench.MEMORY_PROBES[name]
    config = {"model": str(tiny_model_dir), "shape": asdict(shape), "method": method, "finetune": finetune,
              "reference": reference, "steps": 2, "out": str(tmp_path / "probe"),
              "data": {"domain": str(corpora["domain"]), "general": str(general)}}
    out = bench.run_probe(config)
    assert out["held_reference"] == held and 5 < out["peak_mib"] < 2000
