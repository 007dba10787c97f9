import json

from mol_engine.replicate import targets, write_report


def result(method, ratio, ppl, kl, em, steps=(0, 10)):
    curves = [{"step": s, "eval/domain_ppl": ppl * (3 - i), "eval/general_ppl": 80.0, "eval/general_kl": kl * i,
               "eval/qa_exact_match": em * i} for i, s in enumerate(steps)]
    return {"method": method, "ratio": ratio, "eval/domain_ppl": ppl * 2, "eval/general_ppl": 80.0,
            "eval/general_kl": kl, "eval/qa_exact_match": em, "wall_s": 1.0, "curves": curves}


def test_targets_compare_mol_with_cpt_at_one_to_one():
    good = [result("cpt", "1:1", 1.5, 2.0, 0.7), result("mol", "1:1", 1.52, 0.1, 0.9)]
    assert [ok for _, ok, _ in targets(good)] == [True, True, True]
    bad = [result("cpt", "1:1", 1.5, 2.0, 0.7), result("mol", "1:1", 2.0, 1.0, 0.6)]
    assert [ok for _, ok, _ in targets(bad)] == [False, False, False]


def test_report_holds_the_runs_figures(tmp_path):
    runs = [result("cpt", "1:1", 1.5, 2.0, 0.7), result("mol", "1:1", 1.52, 0.1, 0.9)]
    write_report(runs, tmp_path, steps=10)
    finals = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["eval/general_kl"]) for r in finals] == [("cpt", 2.0), ("mol", 0.1)]
    assert all({"eval/domain_ppl", "eval/general_ppl", "eval/qa_exact_match"} <= r.keys() for r in finals)
    text = (tmp_path / "results.md").read_text()
    assert "| mol | 1:1 | 3.040 |" in text and "✅ MoL KL-to-base" in text
    assert (tmp_path / "results-curves.png").stat().st_size > 10_000
    assert (tmp_path / "results-tradeoff.png").stat().st_size > 10_000
