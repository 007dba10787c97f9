import json
import math

import pytest
import yaml

from mol_cli.main import main
from mol_engine.spec_file import parse_grid
from mol_engine.sweep import SweepError, expand_grid, pareto_frontier, ranked, result_point

BASE = {"name": "legal", "base_model": "m", "domain_data": ["d"], "general_data": ["g"], "seed": 7}


def test_expand_grid_is_the_cartesian_product_on_the_same_data_and_seed():
    points = expand_grid(BASE, {"ratio": ["4:1", " 1 : 2"], "kl_weight": [0.5, 1], "method": ["mol"]})
    assert [name for name, _ in points] == [
        "legal [ratio=4:1 kl_weight=0.5 method=mol]", "legal [ratio=4:1 kl_weight=1.0 method=mol]",
        "legal [ratio=1:2 kl_weight=0.5 method=mol]", "legal [ratio=1:2 kl_weight=1.0 method=mol]"]
    specs = [spec for _, spec in points]
    assert [(s["ratio"], s["kl_weight"]) for s in specs] == [("4:1", 0.5), ("4:1", 1.0), ("1:2", 0.5), ("1:2", 1.0)]
    assert all(s["seed"] == 7 and s["domain_data"] == ["d"] and s["general_data"] == ["g"] for s in specs)
    assert all(s["name"] == name for name, s in points)


@pytest.mark.parametrize(("grid", "message"), [
    ({"seed": [1, 2]}, "unknown key 'seed'; a sweep may vary ratio, kl_weight, lr, method"),
    ({}, "grid: empty"),
    ({"lr": []}, "grid.lr: expected a non-empty list"),
    ({"lr": 1e-3}, "grid.lr: expected a non-empty list"),
    ({"lr": [1e-3, 1e-3]}, "grid.lr: a value is repeated"),
    ({"ratio": ["4:1", "4 : 1"]}, "grid: the point ratio=4:1 is repeated"),
    ({"lr": [1e-3, -1]}, "grid point lr=-1: invalid job spec:\nlr: Input should be greater than 0"),
    ({"lr": [1e-3, 1e-4, 1e-5], "kl_weight": [0.1, 0.5, 1, 2]}, "3 x 4 = 12 jobs, more than the cap of 10"),
])
def test_expand_grid_refuses_bad_grids_naming_the_problem(grid, message):
    with pytest.raises(SweepError) as err:
        expand_grid(BASE, grid, max_jobs=10)
    assert message in str(err.value)


def test_expand_grid_names_a_bad_base_spec():
    with pytest.raises(SweepError, match="domain_data: Field required"):
        expand_grid({"base_model": "m"}, {"lr": [1e-3]})


def point(id_, gain, drift):
    return {"id": id_, "gain": gain, "drift": drift}


def test_pareto_frontier_on_crafted_points():
    points = [
        point("a", 0.10, 0.01),  # least drift
        point("b", 0.30, 0.05),
        point("b2", 0.30, 0.05),  # tied with b on both axes: neither dominates, both on the frontier
        point("c", 0.50, 0.20),  # most gain
        point("d", 0.20, 0.05),  # dominated by b (same drift, less gain)
        point("e", 0.30, 0.08),  # dominated by b (same gain, more drift)
        point("f", 0.05, 0.30),  # dominated by everything
        point("g", 0.50, 0.25),  # dominated by c
        point("h", None, None),  # not evaluated yet: no candidate
        point("i", 0.90, math.nan),  # no finite drift: no candidate
    ]
    assert pareto_frontier(points) == ["a", "b", "b2", "c"]
    assert pareto_frontier([]) == []
    assert pareto_frontier([point("only", -0.1, 0.4)]) == ["only"]
    rows = ranked(points)
    assert [r["id"] for r in rows][:4] == ["i", "c", "g", "b"] and rows[-1]["id"] == "h"  # by gain, None last
    assert {r["id"] for r in rows if r["on_frontier"]} == {"a", "b", "b2", "c"}


def test_result_point_is_the_fall_of_domain_ce_and_the_final_kl():
    evals = [{"step": 0, "eval/domain_ppl": 20.0, "eval/general_kl": 0.0},
             {"step": 5, "eval/domain_ppl": 10.0, "eval/general_kl": 0.2},
             {"step": 10, "eval/domain_ppl": 8.0, "eval/general_kl": 0.3},
             {"step": 10, "train/loss": 1.0}]
    got = result_point("j", evals)
    assert got["id"] == "j" and got["gain"] == pytest.approx(math.log(20 / 8)) and got["drift"] == 0.3
    assert result_point("j", evals[:1]) == {"id": "j", "gain": None, "drift": None}  # the base only
    assert result_point("j", [{"step": 0, "eval/domain_ppl": 20.0}, {"step": 3, "eval/domain_ppl": 10.0}])[
        "drift"] is None  # domain_only: no general text


def test_parse_grid_keeps_ratios_and_types_numbers():
    assert parse_grid(["ratio=4:1,1:1,1:2", "kl_weight=0.5,1", "lr=1e-3"]) == {
        "ratio": ["4:1", "1:1", "1:2"], "kl_weight": [0.5, 1], "lr": [0.001]}


def test_mol_sweep_trains_each_point_and_writes_the_frontier(tmp_path, tiny_model_dir, corpora, capsys):
    spec = {"base_model": str(tiny_model_dir), "domain_data": [str(corpora["domain"])],
            "general_data": [str(corpora["general"])], "seq_len": 32, "batch_size": 4, "max_steps": 2,
            "eval_every": 2, "save_every": 2, "eval_batches": 1, "lr": 1e-3, "keep_checkpoints": 1}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    assert main(["sweep", str(tmp_path / "spec.yaml"), "--grid", "ratio=4:1,1:1", "--out", str(out)]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert {r["id"] for r in summary["jobs"]} == {"ratio=4-1", "ratio=1-1"}
    assert all((out / r["id"] / "metrics.jsonl").is_file() and r["status"] == "succeeded" for r in summary["jobs"])
    assert all(r["gain"] is not None and r["drift"] is not None for r in summary["jobs"])
    assert summary["frontier"] == pareto_frontier(summary["jobs"]) != []
    printed = capsys.readouterr().out
    assert "domain gain" in printed and all(r["id"] in printed for r in summary["jobs"])


def test_mol_sweep_refuses_an_unknown_grid_key(tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(BASE))
    assert main(["sweep", str(tmp_path / "spec.yaml"), "--grid", "seed=1,2", "--out", str(tmp_path / "s")]) == 2
    assert "unknown key 'seed'" in capsys.readouterr().err
