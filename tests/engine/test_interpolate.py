"""Weight interpolation: θ(α) between the base and a checkpoint, evaluated by training's evaluation and exported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mol_cli.main import main
from mol_engine.export import export_checkpoint
from mol_engine.interpolate import (
    InterpolationError,
    check_alphas,
    evaluate_interpolation,
    export_interpolated,
    interpolated_state,
    scaled_adapter,
)
from mol_engine.train import train


def evaluations(checkpoint) -> dict[str, dict[str, float]]:
    return json.loads((checkpoint / "trainer_state.json").read_text())["evaluations"]


def weights(directory) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        found |= load_file(path)
    return found


def test_interpolated_state_is_linear_and_exact_at_the_ends():
    base = {"w": torch.tensor([0.0, 2.0, -1.0]), "h": torch.tensor([1.0], dtype=torch.bfloat16)}
    ckpt = {"w": torch.tensor([1.0, 4.0, 3.0]), "h": torch.tensor([3.0], dtype=torch.bfloat16)}
    half = interpolated_state(base, ckpt, 0.5)
    assert torch.equal(half["w"], torch.tensor([0.5, 3.0, 1.0]))
    assert half["h"].dtype == torch.bfloat16 and half["h"].item() == 2.0
    assert all(torch.equal(interpolated_state(base, ckpt, 0.0)[k], base[k]) for k in base)
    assert all(torch.equal(interpolated_state(base, ckpt, 1.0)[k], ckpt[k]) for k in ckpt)


def test_interpolated_state_names_the_first_mismatch():
    base = {"a": torch.zeros(2), "b": torch.zeros(2)}
    with pytest.raises(InterpolationError, match="'b' is in the base, not in the checkpoint"):
        interpolated_state(base, {"a": torch.zeros(2)}, 0.5)
    with pytest.raises(InterpolationError, match=r"'a' has shape \(2,\) in the base, \(3,\)"):
        interpolated_state(base, {"a": torch.zeros(3), "b": torch.zeros(2)}, 0.5)


def test_scaled_adapter_scales_lora_b_alone():
    adapter = {"m.q_proj.lora_A.weight": torch.ones(2, 4), "m.q_proj.lora_B.weight": torch.full((4, 2), 2.0)}
    scaled = scaled_adapter(adapter, 0.25)
    assert torch.equal(scaled["m.q_proj.lora_A.weight"], adapter["m.q_proj.lora_A.weight"])
    assert torch.equal(scaled["m.q_proj.lora_B.weight"], torch.full((4, 2), 0.5))


@pytest.mark.parametrize("alphas", [[1.5], [-0.1], [math.nan], [], [0.1] * 12])
def test_alphas_outside_0_1_or_too_many_are_refused(alphas):
    with pytest.raises(InterpolationError, match="alphas"):
        check_alphas(alphas)


def test_full_run_theta_0_is_the_base_and_theta_1_the_checkpoint(make_spec, tmp_path):
    spec = make_spec(max_steps=4, eval_every=4, save_every=4)
    result = train(spec, tmp_path / "run")
    history = evaluations(result.checkpoint)
    rows = evaluate_interpolation(spec, result.checkpoint, [0.0, 0.5, 1.0])
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    base, half, ckpt = rows
    assert base["general_kl"] == 0.0
    assert {k: base[k] for k in ("domain_ppl", "general_ppl", "qa_exact_match")} == {
        k: history["0"][f"eval/{k}"] for k in ("domain_ppl", "general_ppl", "qa_exact_match")}
    assert {f"eval/{k}": v for k, v in ckpt.items() if k != "alpha"} == history["4"]
    assert 0.0 < half["general_kl"] < ckpt["general_kl"]
    with pytest.raises(InterpolationError, match="within \\[0, 1\\]"):
        evaluate_interpolation(spec, result.checkpoint, [0.5, 2.0])

    out = export_interpolated(result.checkpoint, 0.5, tmp_path / "half")
    exported, base_w, ckpt_w = weights(out), weights(Path(spec.base_model)), weights(result.checkpoint / "model")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(exported[name], 0.5 * base_w[name] + 0.5 * ckpt_w[name])
    assert "α = 0.5" in (out / "README.md").read_text()


def test_lora_scaled_at_0_is_the_base_and_at_1_the_merged_adapter(make_spec, tmp_path):
    spec = make_spec(finetune="lora", lora={"rank": 4}, lr=1e-2, max_steps=2, eval_every=2, save_every=2,
                     eval_data=None)
    result = train(spec, tmp_path / "run")
    at_0 = weights(export_interpolated(result.checkpoint, 0.0, tmp_path / "a0"))
    at_1 = weights(export_interpolated(result.checkpoint, 1.0, tmp_path / "a1"))
    merged = weights(export_checkpoint(result.checkpoint, tmp_path / "merged", merged=True))
    base = weights(Path(spec.base_model))
    assert at_0.keys() == base.keys() == merged.keys()
    assert all(torch.equal(at_0[k], base[k]) for k in base)
    assert all(torch.allclose(at_1[k], merged[k]) for k in merged)
    assert any(not torch.equal(merged[k], base[k]) for k in base)  # the adapter did change something
    (row,) = evaluate_interpolation(spec, result.checkpoint, [0.0])
    assert row["general_kl"] == 0.0
    with pytest.raises(InterpolationError, match="within \\[0, 1\\]"):
        export_interpolated(result.checkpoint, 1.5, tmp_path / "bad")


def test_cli_prints_a_table_exports_and_refuses_alpha_outside_0_1(make_spec, tmp_path, capsys):
    spec = make_spec(finetune="lora", lora={"rank": 4}, lr=1e-2, max_steps=2, eval_every=2, save_every=2,
                     eval_data=None)
    run = tmp_path / "run"
    train(spec, run)
    assert main(["interpolate", str(run), "--alphas", "0,1", "--export", "0.5", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["alpha", "domain_ppl", "general_ppl", "general_kl"]
    assert [line.split()[0] for line in out[1:3]] == ["0", "1"] and float(out[1].split()[3]) == 0.0
    assert out[3] == str(tmp_path / "x") and (tmp_path / "x" / "config.json").is_file()
    assert main(["interpolate", str(run), "--alphas", "0,1.5"]) == 2
    assert "1.5 is not" in capsys.readouterr().err
