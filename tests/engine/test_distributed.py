"""The engine under torchrun: 2 CPU processes (gloo) follow the 1-process curve with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mol_engine.callbacks import JsonlLogger
from mol_engine.checkpoint import read_sharded_weights
from mol_engine.distributed import World, uses_fsdp
from mol_engine.export import export_checkpoint
from mol_engine.modeling import add_lora, load_model
from mol_engine.train import train

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
KEYS = ("train/loss", "train/domain_ce", "train/general_kl", "train/grad_norm")


def points(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def launch(target: list[str], spec_path, out, *extra, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """``target train SPEC --out OUT`` in 2 processes under torchrun (``env`` added to the environment); a hang
    fails the test after 300 s."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)} | (env or {})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *target, "train", str(spec_path), "--out", str(out), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def torchrun(spec_path, out, *extra):
    done = launch(["-m", "mol_cli"], spec_path, out, *extra)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_match_one_with_the_same_global_batch_and_resume(make_spec, tmp_path):
    single = make_spec(batch_size=8, max_steps=4, save_every=2, eval_every=4, distributed="ddp")
    train(single, tmp_path / "one", [JsonlLogger(tmp_path / "one")])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(single.model_copy(update={"batch_size": 4}).model_dump(mode="json")))
    torchrun(spec_path, tmp_path / "two")

    one, two = points(tmp_path / "one"), points(tmp_path / "two")
    assert [p["step"] for p in two] == [p["step"] for p in one]  # rank 0 alone logged, every step once
    for a, b in zip(one, two, strict=True):
        for key in KEYS:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), (a["step"], key)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-2", "step-4"]

    # resume across ranks: drop the last checkpoint and its points, continue from step-2
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step-4")
    torchrun(spec_path, tmp_path / "two", "--resume")
    resumed = points(tmp_path / "two")
    assert [p["step"] for p in resumed] == [p["step"] for p in one]
    for a, b in zip(one, resumed, strict=True):
        for key in KEYS:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), (a["step"], key)


def test_two_processes_build_and_share_the_cached_reference(make_spec, corpora, tmp_path):
    """Rank 0 builds the top-k cache while rank 1 waits; both then read their own rows' targets. The build takes
    longer than the process group's timeout (MOL_DIST_TIMEOUT_S=5, a build slowed by 8 s): rank 1 waits for it
    outside any collective, so the job succeeds (it failed with gloo's timeout when rank 1 waited in a barrier)."""
    copies = {}
    for name in ("one", "two"):  # a corpus copy each, so the 2-process run builds its own cache
        copies[name] = tmp_path / f"general-{name}.jsonl"
        shutil.copy(corpora["general"], copies[name])
    single = make_spec(batch_size=8, max_steps=3, save_every=3, eval_every=3, reference="cached",
                       reference_top_k=16, general_data=[str(copies["one"])])
    train(single, tmp_path / "one", [JsonlLogger(tmp_path / "one")])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(single.model_copy(
        update={"batch_size": 4, "general_data": [str(copies["two"])]}).model_dump(mode="json")))
    done = launch([str(ROOT / "tests" / "engine" / "slow_cache_rank0.py")], spec_path, tmp_path / "two",
                  env={"MOL_DIST_TIMEOUT_S": "5"})
    assert done.returncode == 0, done.stderr[-3000:]

    assert len(list(tmp_path.glob("general-two.jsonl.mol-cache/topk-*/meta.json"))) == 1
    assert not list(tmp_path.glob("general-two.jsonl.mol-cache/.building-*"))  # nothing half-written left
    events = [json.loads(line) for line in (tmp_path / "two" / "events.jsonl").read_text().splitlines()]
    words = [e["message"].split(" ")[0] for e in events if e["kind"] == "reference-cache"]
    assert words.count("cached") == 1 and "reusing" not in words  # built once (progress lines say "caching")
    one, two = points(tmp_path / "one"), points(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        for key in KEYS:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), (a["step"], key)


def test_a_cancel_while_rank_0_builds_the_cache_ends_every_rank_cancelled(make_spec, corpora, tmp_path):
    """Cancelled before step 1, while rank 0 builds the reference cache and rank 1 waits for it: rank 1 learns of
    it (rank 0's cancel note), so both ranks end the run ``cancelled`` and exit 0 (the service's runner then marks
    the job cancelled). Rank 1 used to wait for the cache's marker forever, until the job was killed or failed."""
    general = tmp_path / "general.jsonl"  # a copy of its own: the cache is built here, not reused
    shutil.copy(corpora["general"], general)
    spec = make_spec(max_steps=2, reference="cached", reference_top_k=16, general_data=[str(general)])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    done = launch([str(ROOT / "tests" / "engine" / "cancel_cache_rank0.py")], spec_path, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(tmp_path / "two" / f"result-{rank}").read_text() for rank in (0, 1)] == ["cancelled", "cancelled"]
    assert not list(tmp_path.glob("general.jsonl.mol-cache/.building-*"))  # nothing half-written left
    assert not list(tmp_path.glob("general.jsonl.mol-cache/topk-*"))


def test_full_disk_on_rank_0_stops_both_ranks_with_its_message(make_spec, tmp_path):
    """Rank 0 prunes to the newest checkpoint; when its disk fills, every rank exits instead of waiting."""
    spec_path = tmp_path / "spec.yaml"
    spec = make_spec(batch_size=4, max_steps=4, save_every=1, eval_every=4, keep_checkpoints=1, distributed="ddp")
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))  # (FSDP: test_sharded_checkpoint.py)
    done = launch([str(ROOT / "tests" / "engine" / "full_disk_rank0.py")], spec_path, tmp_path / "two")
    assert done.returncode != 0
    assert "error: disk full while writing checkpoint step-3 under" in done.stderr
    assert "(checkpoints kept: step-2)" in done.stderr
    assert "error: rank 0 could not write checkpoint step-3" in done.stderr
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-2"]


def test_auto_picks_fsdp_for_full_fine_tuning_with_several_processes():
    two, one = World(0, 2), World()
    assert uses_fsdp("auto", two, lora=False) and not uses_fsdp("auto", two, lora=True)
    assert uses_fsdp("fsdp", two, lora=True) and not uses_fsdp("ddp", two, lora=False)
    assert not uses_fsdp("fsdp", one, lora=False)  # one process: nothing to shard over


def test_fsdp_follows_one_process_in_half_the_memory_per_rank(make_spec, tiny_model_dir, tmp_path):
    """bench/fsdp_check.py's measure: per-step loss, CE and grad norm within 1e-4 relative (fp32, same global
    batch), and each rank holds about half the parameter + optimizer-state bytes. Gradients are reduce-scattered
    after every micro-batch (each rank holds its half of them before the second one), the frozen reference's layers
    prefetch the next one's all-gather, and each rank loads only its shards: setting up a 26M-parameter model, its
    frozen reference and the optimizer peaks at <= 0.65 x one process's memory on every rank (about 0.5; it was
    about 1.0 when every rank loaded the whole model and reference first)."""
    from fsdp_check import compare, rss_ratio, run_curve, wide_model

    spec = make_spec(batch_size=8, grad_accum=2, max_steps=4, save_every=100, eval_every=100, distributed="fsdp",
                     precision="fp32")
    wide = spec.model_copy(update={"base_model": str(wide_model(tmp_path, tiny_model_dir, 512, 8))})
    single = run_curve(spec, tmp_path / "one", 1, rss_spec=wide)
    sharded = run_curve(spec.model_copy(update={"batch_size": 4}), tmp_path / "two", 2, rss_spec=wide)
    figures = compare(single, sharded)
    assert figures["fsdp_vs_single_curve_maxrel"] <= 1e-4, figures
    assert figures["fsdp_vs_single_kl_maxabs"] <= 1e-6, figures
    assert 0.45 <= figures["fsdp_rank_memory_ratio"] <= 0.6, figures
    for rank in sharded:
        second = rank["micro_batches"][1::2]  # grad_accum 2: before each step's second micro-batch
        assert len(second) == 4 and all(m["with_grad"] == 1.0 and m["grad_share"] <= 0.55 for m in second), second
        assert rank["reference_prefetch"] and rank["rss"]["largest_param_share"] <= 0.5
    assert rss_ratio(single, sharded) <= 0.65, (single[0]["rss"], [r["rss"] for r in sharded])


def test_a_rank_reads_only_its_rows_of_each_weight_into_a_meta_built_model(tiny_model_dir, tmp_path):
    """What FSDP's sharded load reads (mol_engine/sharded_load.py), in one process: any rows of any tensor, in the
    file's dtype, equal the whole file's; the meta-built model has its weights on meta, its buffers real, its head
    tied to the embedding, and names every weight the file holds; a file whose names differ is not sliced."""
    from safetensors.torch import load_file, save_file

    from mol_engine.sharded_load import meta_model, sliceable, stored_tensors

    whole = load_file(tiny_model_dir / "model.safetensors")
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    save_file({name: t.to(torch.bfloat16) for name, t in whole.items()}, tmp_path / "model.safetensors")
    for folder, dtype in ((tiny_model_dir, torch.float32), (tmp_path, torch.bfloat16)):
        stored = stored_tensors(str(folder))
        for name, tensor in whole.items():
            first, stop = tensor.shape[0] // 3, tensor.shape[0] - 1
            assert torch.equal(stored[name].rows(first, stop), tensor[first:stop].to(dtype)), name
    model = meta_model(str(tiny_model_dir), torch.float32)
    assert all(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert sliceable(model, stored_tensors(str(tiny_model_dir)))
    save_file({f"transformer.{name}": t for name, t in whole.items()}, tmp_path / "model.safetensors")
    assert not sliceable(model, stored_tensors(str(tmp_path)))  # loaded whole, then sharded


def test_lora_under_fsdp_trains_resumes_and_exports(make_spec, tiny_model_dir, tmp_path):
    spec = make_spec(batch_size=4, max_steps=2, save_every=1, eval_every=2, finetune="lora", distributed="fsdp")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    torchrun(spec_path, tmp_path / "two")
    first = [p for p in points(tmp_path / "two") if "train/loss" in p]
    assert [p["step"] for p in first] == [1, 2]
    assert all(0 < p["train/loss"] < 100 and p["train/grad_norm"] > 0 for p in first)
    assert sorted(read_sharded_weights(tmp_path / "two" / "checkpoints" / "step-2")) == sorted(
        name for name, p in add_lora(load_model(str(tiny_model_dir), torch.device("cpu")), spec).named_parameters()
        if p.requires_grad)  # the shards hold the adapter alone (the base comes from the base model)

    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step-2")  # step 2 again, from the adapter of step 1
    torchrun(spec_path, tmp_path / "two", "--resume")
    again = [p for p in points(tmp_path / "two") if "train/loss" in p]
    assert [p["step"] for p in again] == [1, 2]
    for key in KEYS:
        assert again[1][key] == pytest.approx(first[1][key], rel=1e-4, abs=1e-6), key

    # export: the adapter as PEFT writes it, and merged into the base, give the same logits
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    step = tmp_path / "two" / "checkpoints" / "step-2"
    adapter = export_checkpoint(step, tmp_path / "adapter")
    merged = export_checkpoint(step, tmp_path / "merged", merged=True)
    assert (adapter / "adapter_model.safetensors").is_file() and (merged / "config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.arange(1, 33).reshape(2, 16)
    with torch.no_grad():
        plain = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, adapter)(ids).logits
        assert torch.allclose(AutoModelForCausalLM.from_pretrained(merged)(ids).logits, with_adapter, atol=1e-5)
    assert (with_adapter - plain).abs().max() > 0  # the adapter trained


def test_the_process_groups_timeout_is_a_setting(monkeypatch):
    from datetime import timedelta

    from mol_engine.distributed import dist_timeout

    monkeypatch.delenv("MOL_DIST_TIMEOUT_S", raising=False)
    assert dist_timeout() == timedelta(seconds=1800)
    monkeypatch.setenv("MOL_DIST_TIMEOUT_S", "5")
    assert dist_timeout() == timedelta(seconds=5)
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv("MOL_DIST_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match=f"MOL_DIST_TIMEOUT_S: expected a number of seconds above 0, got '{bad}'"):
            dist_timeout()
