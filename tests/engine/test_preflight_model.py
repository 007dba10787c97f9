"""The pre-flight estimate's model (mol_engine/estimate.py): it moves the way the engine's memory and time do."""

import json

import pytest

from mol_engine.estimate import (
    DEVICES,
    EstimateError,
    device_kind,
    estimate,
    fits,
    model_shape,
    read_model_shape,
)
from mol_engine.spec import JobSpec

# Qwen2.5-0.5B's shape (bench/gpu_check.py): 494,032,768 parameters, tied embeddings, biases on q, k, v
QWEN = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True}
SHAPE = model_shape(QWEN)
H100 = DEVICES["H100"]


def spec(**fields) -> JobSpec:
    return JobSpec(**{"base_model": "m", "domain_data": ["d"], "general_data": ["g"], "seq_len": 1024,
                      "batch_size": 8} | fields)


def test_the_shape_is_read_from_config_json_and_counts_the_parameters(tmp_path):
    assert SHAPE.params == 494_032_768
    (tmp_path / "config.json").write_text(json.dumps(QWEN))
    assert read_model_shape(tmp_path) == SHAPE
    with pytest.raises(EstimateError, match="base_model"):
        read_model_shape(tmp_path / "missing")
    with pytest.raises(EstimateError, match="base_model"):
        model_shape({"hidden_size": 8})


def test_devices_are_known_by_the_names_workers_and_nvidia_smi_give():
    assert device_kind("NVIDIA H100 80GB HBM3").name == "H100"
    assert device_kind("cuda: 2 x NVIDIA H100 PCIe (GPUs 0,1)").name == "H100 PCIe"
    assert device_kind("cpu (8 cores)").name == "cpu"
    assert device_kind("cuda (GPUs 3)").name == "cuda"
    assert device_kind("TPU v5") is None


def test_memory_grows_with_the_batch_and_each_saving_lowers_it():
    peak = {b: estimate(spec(batch_size=b), SHAPE, H100).peak_bytes for b in (2, 4, 8, 16)}
    assert peak[2] < peak[4] < peak[8] < peak[16]
    full = estimate(spec(), SHAPE, H100)
    assert estimate(spec(finetune="lora"), SHAPE, H100).peak_bytes < full.peak_bytes
    cached = estimate(spec(reference="cached"), SHAPE, H100)
    assert cached.peak_bytes < full.peak_bytes and cached.parts["reference"] == 0 < full.parts["reference"]
    checkpointed = estimate(spec(gradient_checkpointing=True), SHAPE, H100)
    assert checkpointed.parts["activations"] < full.parts["activations"] / 5
    assert checkpointed.step_s > full.step_s  # the recompute


def test_fsdp_divides_the_model_s_state_and_ddp_does_not():
    one, fsdp = estimate(spec(), SHAPE, H100), estimate(spec(nproc=4), SHAPE, H100)
    assert fsdp.sharding == "fsdp"
    assert fsdp.parts["optimizer"] == pytest.approx(one.parts["optimizer"] / 4, rel=0.01)
    assert fsdp.parts["reference"] == pytest.approx(2 * SHAPE.params / 4, rel=0.01)  # gathered in bf16: all bf16
    ddp = estimate(spec(nproc=4, distributed="ddp"), SHAPE, H100)
    assert ddp.sharding == "ddp" and ddp.parts["optimizer"] == one.parts["optimizer"]


def test_dtypes_follow_the_engine_fp32_masters_everywhere_a_bf16_reference_on_cuda():
    gpu, cpu = estimate(spec(), SHAPE, H100), estimate(spec(), SHAPE, DEVICES["cpu"])
    assert (gpu.dtype, cpu.dtype) == ("bf16", "fp32")
    assert gpu.parts["parameters"] == cpu.parts["parameters"] == 4 * SHAPE.params
    assert gpu.parts["reference"] < cpu.parts["reference"] == 4 * SHAPE.params
    # a spec that says device: cpu trains on the CPU whatever the worker has
    assert estimate(spec(device="cpu"), SHAPE, H100).device == "cpu"


def test_time_counts_the_reference_the_checkpointing_and_the_job_s_evaluations_and_saves():
    exact, cpt = estimate(spec(), SHAPE, H100), estimate(spec(method="cpt"), SHAPE, H100)
    assert exact.flops_per_step > cpt.flops_per_step
    longer = estimate(spec(max_steps=2000), SHAPE, H100)
    assert longer.job_s > exact.job_s > 1000 * exact.step_s
    assert estimate(spec(grad_accum=2), SHAPE, H100).step_s == pytest.approx(2 * exact.step_s)


def test_a_fit_leaves_the_margin_and_cpu_processes_share_the_host():
    assert fits(70 * 2**30, 80 * 2**30, 0.1, H100, 1) and not fits(75 * 2**30, 80 * 2**30, 0.1, H100, 1)
    assert not fits(30 * 2**30, 80 * 2**30, 0.1, DEVICES["cpu"], 4)
