import json

import pytest

from mol_cli.main import main as cli
from mol_engine.replicate import grids, machine_note, run_all, targets, write_report
from mol_engine.sweep import SweepError


def result(method, ratio, ppl, kl, em, steps=(0, 10), kl_weight=1.0):
    curves = [{"step": s, "eval/domain_ppl": ppl * 2 if i else 6.0, "eval/general_ppl": 80.0, "eval/general_kl": kl * i,
               "eval/qa_exact_match": em * i} for i, s in enumerate(steps)]
    return {"run": f"{method} {ratio}" if method == "mol" else method, "method": method, "ratio": ratio,
            "kl_weight": kl_weight, "eval/domain_ppl": ppl * 2, "eval/general_ppl": 80.0, "eval/general_kl": kl,
            "eval/qa_exact_match": em, "wall_s": 1.0, "curves": curves}


def test_targets_compare_mol_with_cpt_at_one_to_one():
    good = [result("cpt", "1:1", 1.5, 2.0, 0.7), result("mol", "1:1", 1.52, 0.1, 0.9)]
    assert [ok for _, ok, _ in targets(good)] == [True, True, True]
    bad = [result("cpt", "1:1", 1.5, 2.0, 0.7), result("mol", "1:1", 2.0, 1.0, 0.6)]
    assert [ok for _, ok, _ in targets(bad)] == [False, False, False]
    # MoL at CPT's kl_weight is the one compared; without it, no targets
    other = [result("cpt", "1:1", 1.5, 2.0, 0.7), result("mol", "1:1", 2.0, 1.0, 0.6, kl_weight=0.5)]
    assert targets(other) == [] and targets([*other, *good[1:]]) == targets(good)


def test_report_holds_the_runs_figures_and_the_frontier(tmp_path):
    runs = [result("cpt", "1:1", 1.5, 2.0, 0.7), result("mol", "1:1", 1.52, 0.1, 0.9),
            result("mol", "4:1", 1.6, 0.2, 0.9)]  # 4:1: less gain and more drift than 1:1, so dominated
    write_report(runs, tmp_path, steps=10, machine="; wall times on 2 CPU cores")
    finals = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["eval/general_kl"]) for r in finals] == [("cpt", 2.0), ("mol", 0.1), ("mol", 0.2)]
    assert all({"eval/domain_ppl", "eval/general_ppl", "eval/qa_exact_match", "gain", "drift"} <= r.keys()
               for r in finals)
    assert [r["on_frontier"] for r in finals] == [True, True, False]  # cpt: the most gain, at the most drift
    text = (tmp_path / "results.md").read_text()
    assert "| mol | 1:1 | 1 | 3.040 |" in text and "✅ MoL KL-to-base" in text and "2 CPU cores" in text
    assert "lowest drift first: **mol 1:1**, **cpt**." in text
    for png in ("results-curves.png", "results-tradeoff.png", "results-pareto.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_replicate_runs_its_grids_as_a_sweep(make_spec, tmp_path):
    base = make_spec(max_steps=2, eval_every=2, save_every=2, eval_batches=1).model_dump(mode="json")
    results = run_all(tmp_path / "runs", base, {"ratio": ["1:1"], "kl_weight": [0.5, 2.0]}, log=lambda _: None)
    assert [r["run"] for r in results] == ["domain_only", "cpt", "mol 1:1 kl_weight=0.5", "mol 1:1 kl_weight=2.0"]
    assert all([c["step"] for c in r["curves"]] == [0, 2] for r in results)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "method=cpt_ratio=1-1", "method=domain_only_ratio=1-1", "method=mol_ratio=1-1_kl_weight=0.5",
        "method=mol_ratio=1-1_kl_weight=2.0"]
    write_report(results, tmp_path / "docs", steps=2)
    finals = json.loads((tmp_path / "docs" / "results.json").read_text())
    front = [r for r in finals if r["on_frontier"]]
    assert front and all(r["gain"] is not None and r["drift"] > 0 for r in finals)
    for r in finals:  # off the frontier exactly when another run has at least its gain at no more drift
        beaten = any(o["gain"] >= r["gain"] and o["drift"] <= r["drift"] and o is not r
                     and (o["gain"], o["drift"]) != (r["gain"], r["drift"]) for o in finals)
        assert r["on_frontier"] is not beaten, r
    assert "Targets, MoL 1:1" not in (tmp_path / "docs" / "results.md").read_text()  # no MoL at CPT's kl_weight
    again = run_all(tmp_path / "runs", base, {"ratio": ["1:1"], "kl_weight": [0.5, 2.0]}, log=lambda _: None)
    assert [r["curves"] for r in again] == [r["curves"] for r in results]  # complete runs reused, figures kept
    assert all(r["wall_s"] is None for r in again) and all(r["wall_s"] > 0 for r in results)
    assert all(r["load"] >= 0 for r in results)  # the machine's load as each run ended, for the report's header
    assert "busy" in machine_note([0.5, 999.0]) and "busy" not in machine_note([0.0, 0.0])


def test_replicate_refuses_a_grid_over_the_method(capsys):
    with pytest.raises(SweepError, match="fixes the methods"):
        grids({"method": ["mol"]})
    assert cli(["replicate", "--grid", "warmup=1,2", "--docs", "/nonexistent"]) == 2
    assert "unknown key 'warmup'" in capsys.readouterr().err
