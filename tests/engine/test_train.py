import itertools
import json
import threading
from pathlib import Path
from typing import get_args

import pytest
import torch
from transformers import AutoModelForCausalLM

from mol_engine.callbacks import Callback, EngineEventKind, JsonlLogger
from mol_engine.export import export_checkpoint
from mol_engine.train import TrainError, lr_factor, train

TRAIN_KEYS = {"train/domain_ce", "train/general_kl", "train/loss", "train/lr", "train/tokens_per_s", "train/tokens"}
EVAL_KEYS = {"eval/domain_ppl", "eval/general_ppl", "eval/general_kl", "eval/qa_exact_match"}


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class StopAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step, self.last = step, 0

    def on_metrics(self, step, metrics):
        self.last = step

    def should_stop(self) -> bool:
        return self.last >= self.step


def test_mol_run_logs_every_curve_from_the_base_model(make_spec, tmp_path):
    result = train(make_spec(), tmp_path, [JsonlLogger(tmp_path)])
    assert result.status == "succeeded" and result.step == 6
    points = read_metrics(tmp_path)
    evals = [p for p in points if "eval/domain_ppl" in p]
    trains = [p for p in points if "train/loss" in p]
    assert [p["step"] for p in evals] == [0, 3, 6] and [p["step"] for p in trains] == [1, 2, 3, 4, 5, 6]
    assert all(p.keys() >= EVAL_KEYS for p in evals) and all(p.keys() >= TRAIN_KEYS for p in trains)
    assert evals[0]["eval/general_kl"] == pytest.approx(0.0, abs=1e-6)  # step 0 is the base model itself
    assert trains[0]["train/general_kl"] == pytest.approx(0.0, abs=1e-6)  # first step: model == base
    assert trains[-1]["train/general_kl"] > 0 and evals[-1]["eval/general_kl"] > 0
    assert trains[-1]["train/domain_ce"] < trains[0]["train/domain_ce"]
    tokens = [p["train/tokens"] for p in trains]  # cumulative: what the service meters (store/usage.py)
    assert tokens[0] > 0 and all(b > a for a, b in itertools.pairwise(tokens))
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step-3", "step-6"]
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    events = [e["kind"] for e in logged]
    assert next(e for e in events if e != "token-store") == "config" and events[-1] == "succeeded"
    assert "checkpoint" in events and set(events) <= set(get_args(EngineEventKind))  # the vocabulary says all
    # each evaluation and save says how long it took: the service's time estimates count them apart from steps
    timed = [e for e in logged if e["kind"] in ("eval", "checkpoint")]
    assert [e["kind"] for e in timed] == ["eval", "eval", "checkpoint", "eval", "checkpoint"]
    assert all(isinstance(e["seconds"], float) and 0 <= e["seconds"] < 60 for e in timed), timed


@pytest.mark.parametrize("packing", ["concat", "document"])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(make_spec, tmp_path, packing):
    spec = make_spec(max_steps=8, save_every=3, eval_every=4, packing=packing)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(spec, full, [JsonlLogger(full)])
    interrupted = train(spec, cut, [JsonlLogger(cut), StopAfter(5)])
    assert interrupted.status == "cancelled" and interrupted.step == 5
    assert (cut / "checkpoints" / "step-3").is_dir() and not (cut / "checkpoints" / "step-6").exists()
    train(spec, cut, [JsonlLogger(cut)], resume=True)
    assert_same_curve(full, cut)


def assert_same_curve(full, cut) -> None:
    """The two runs logged the same steps with the same figures (throughput aside), ``train/tokens`` too: the
    cumulative count comes back from the checkpoint, as the service's metering needs."""

    def curve(out):
        return [{k: v for k, v in p.items() if k != "train/tokens_per_s"} for p in read_metrics(out)]

    a, b = curve(full), curve(cut)
    assert [p["step"] for p in a] == [p["step"] for p in b]  # no duplicate or missing step
    for pa, pb in zip(a, b, strict=True):
        assert pa.keys() == pb.keys()
        for key in pa:
            assert pb[key] == pytest.approx(pa[key], rel=1e-4, abs=1e-6), (pa["step"], key)


class PauseAfter(StopAfter):
    def should_stop(self) -> bool:
        return False

    def should_pause(self) -> bool:
        return self.last >= self.step


def test_a_paused_run_saves_at_its_step_and_resumes_into_the_uninterrupted_curve(make_spec, tmp_path):
    spec = make_spec(max_steps=4, save_every=3, eval_every=4)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(spec, full, [JsonlLogger(full)])
    paused = train(spec, cut, [JsonlLogger(cut), PauseAfter(2)])
    assert paused.status == "paused" and paused.step == 2 and paused.checkpoint.name == "step-2"  # not a save step
    events = [json.loads(line) for line in (cut / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "paused" and "step-2 saved" in events[-1]["message"]
    resumed = train(spec, cut, [JsonlLogger(cut)], resume=True)
    assert resumed.status == "succeeded" and resumed.step == 4
    assert_same_curve(full, cut)


def test_a_cancel_wins_over_a_pause_asked_at_the_same_step(make_spec, tmp_path):
    class Both(PauseAfter):
        def should_stop(self) -> bool:
            return self.last >= self.step

    result = train(make_spec(max_steps=5, save_every=3), tmp_path, [Both(1)])
    assert result.status == "cancelled" and result.step == 1
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_fresh_run_refuses_a_directory_with_checkpoints(make_spec, tmp_path):
    train(make_spec(max_steps=1, save_every=1), tmp_path)
    with pytest.raises(TrainError, match="already holds checkpoints"):
        train(make_spec(max_steps=1), tmp_path)


def test_cancel_stops_after_the_current_step_and_keeps_checkpoints(make_spec, tmp_path):
    result = train(make_spec(max_steps=50, save_every=1), tmp_path, [StopAfter(2)])
    assert result.status == "cancelled" and result.step == 2
    assert not any(t.name == "mol-next-batch" for t in threading.enumerate())  # step 3's batch, built ahead: ended
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1", "step-2"]


def test_gradient_accumulation_equals_the_large_batch(make_spec, tmp_path):
    small = train(make_spec(batch_size=4, grad_accum=2, max_steps=2, eval_every=100), tmp_path / "a")
    large = train(make_spec(batch_size=8, grad_accum=1, max_steps=2, eval_every=100), tmp_path / "b")
    for key in ("train/domain_ce", "train/general_kl", "train/loss", "train/grad_norm"):
        # KL is ~1e-4 after two steps and float32 cancellation leaves ~1e-8 of it to summation order
        assert small.metrics[key] == pytest.approx(large.metrics[key], rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize("method", ["cpt", "domain_only"])
def test_baselines_run_on_the_same_pipeline(make_spec, tmp_path, method):
    result = train(make_spec(method=method, max_steps=3), tmp_path, [JsonlLogger(tmp_path)])
    assert result.status == "succeeded"
    assert "train/general_kl" not in result.metrics
    assert ("train/general_ce" in result.metrics) == (method == "cpt")
    assert result.metrics["eval/general_kl"] > 0  # the forgetting gauge is measured for baselines too


def test_full_checkpoint_exports_and_differs_from_base(make_spec, tmp_path, tiny_model_dir):
    result = train(make_spec(max_steps=3), tmp_path / "run")
    out = export_checkpoint(result.checkpoint, tmp_path / "export")
    tuned = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert (tuned(ids).logits - base(ids).logits).abs().max() > 1e-3
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()


def test_lora_run_exports_adapter_and_merged(make_spec, tmp_path, tiny_model_dir):
    result = train(make_spec(finetune="lora", lora={"rank": 4}, lr=1e-2, max_steps=3), tmp_path / "run",
                   [JsonlLogger(tmp_path / "run")])
    first = next(p for p in read_metrics(tmp_path / "run") if "train/general_kl" in p)
    assert first["train/general_kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero
    adapter = export_checkpoint(result.checkpoint, tmp_path / "adapter")
    merged = export_checkpoint(result.checkpoint, tmp_path / "merged", merged=True)
    assert (adapter / "adapter_config.json").is_file() and not (merged / "adapter_config.json").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    via_adapter = AutoModelForCausalLM.from_pretrained(adapter)(ids).logits
    via_merged = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    torch.testing.assert_close(via_adapter, via_merged, rtol=1e-4, atol=1e-4)
    assert (via_merged - base).abs().max() > 1e-4


def test_self_sampled_general_text_anchors_without_a_corpus(make_spec, tmp_path):
    spec = make_spec(general_data=[], general_source="self", self_sample_tokens=1000, max_steps=2)
    result = train(spec, tmp_path)
    samples = (tmp_path / "general_self.jsonl").read_text().splitlines()
    assert len(samples) > 5 and all(json.loads(s)["text"] for s in samples)
    assert "train/general_kl" in result.metrics and "eval/general_kl" in result.metrics


def test_lr_schedule_warms_up_then_decays_to_the_floor(make_spec):
    spec = make_spec(warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    factors = [lr_factor(s, spec) for s in range(20)]
    assert factors[:5] == sorted(factors[:5]) and factors[4] == pytest.approx(1.0)
    assert factors[5:] == sorted(factors[5:], reverse=True)
    assert lr_factor(20, spec) == pytest.approx(0.1)


def test_second_job_on_the_same_files_reuses_their_token_stores(make_spec, corpora, tmp_path):
    files = {name: tmp_path / f"{name}.jsonl" for name in ("domain", "general")}
    for name, path in files.items():
        path.write_bytes(corpora[name].read_bytes())
    spec = make_spec(domain_data=[str(files["domain"])], general_data=[str(files["general"])], max_steps=1)

    def store_events(out):
        train(spec, out, [JsonlLogger(out)])
        events = map(json.loads, (out / "events.jsonl").read_text().splitlines())
        return [e for e in events if e["kind"] == "token-store"]

    first = store_events(tmp_path / "one")
    assert [e["done"] for e in first] == [True, True] and all(e["tokens"] > 0 for e in first)
    assert store_events(tmp_path / "two") == []


def test_kl_set_point_logs_its_weight_and_resumes_it_exactly(make_spec, tmp_path):
    """kl_weight: auto moves λ by the controller's rule from each step's KL, applied from the next step, logs it
    every step, and a paused run resumes with the controller's state (the same curve as an uninterrupted run)."""
    from mol_engine.kl_controller import KLController

    spec = make_spec(max_steps=4, save_every=3, eval_every=4, kl_weight="auto", target_general_kl=1e-3)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(spec, full, [JsonlLogger(full)])
    trains = [p for p in read_metrics(full) if "train/loss" in p]
    replay = KLController(target=1e-3)
    for point in trains:  # the weight each step used: the rule applied to the steps before it
        assert point["train/kl_weight"] == pytest.approx(replay.weight)
        replay.update(point["train/general_kl"])
    assert trains[0]["train/kl_weight"] == 1.0 and len({p["train/kl_weight"] for p in trains}) == 4
    assert train(spec, cut, [JsonlLogger(cut), PauseAfter(2)]).status == "paused"
    train(spec, cut, [JsonlLogger(cut)], resume=True)
    assert_same_curve(full, cut)
