"""The job page's weight interpolation section: its rule in node, and the page in headless Chromium against a live
API (uvicorn in a thread, SQLite, no worker: the evaluations and the interpolation event are crafted rows)."""

from __future__ import annotations

import json
import subprocess

import httpx
from playwright.sync_api import expect
from test_dashboard import FRONTEND, SHOTS, page  # noqa: F401  (page: the Chromium fixture)
from test_sweep_view import live_api  # noqa: F401  (the live API fixture)

from api.db import Job, JobEvent, MetricPoint

RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
const { interpolationGroups } = await import(`${process.argv[1]}/views/job.js`);
const evals = [{ step: 0, "eval/domain_ppl": 20, "eval/general_kl": 0 }, { step: 4, "eval/domain_ppl": 10,
  "eval/general_kl": 0.2 }];
const interpolations = [{ checkpoint: "step-4", rows: [{ alpha: 0, domain_ppl: 20, general_kl: 0 },
  { alpha: 1, domain_ppl: 10, general_kl: 0.2 }] }, { checkpoint: "step-2", rows: null, error: "boom" }];
console.log(JSON.stringify(interpolationGroups(evals, interpolations)));
"""
ROWS = [{"alpha": a, "domain_ppl": p, "general_kl": k} for a, p, k in
        [(0.0, 20.0, 0.0), (0.25, 15.0, 0.01), (0.5, 12.0, 0.04), (0.75, 10.5, 0.11), (1.0, 10.0, 0.2)]]


def test_interpolation_groups_put_training_and_each_alpha_curve_on_the_same_gain_axis():
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    training, along = json.loads(run.stdout)  # the failed interpolation draws nothing
    assert [(p["label"], p["x"]) for p in training["points"]] == [(0, 0), (4, 0.2)]
    assert along["label"] == "step-4 interpolated (by α)"
    assert [p["label"] for p in along["points"]] == ["α=0", "α=1"]
    assert along["points"][1]["y"] == training["points"][1]["y"] > 0 == along["points"][0]["y"]


def test_the_job_page_draws_the_interpolation_beside_the_training_trade_off(live_api, page):  # noqa: F811
    url, app = live_api
    docs = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5))
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        ids = {p: client.post("/v1/datasets", data={"purpose": p}, files={"file": ("d.jsonl", docs)}).json()["id"]
               for p in ("domain", "general")}
        job_id = client.post("/v1/jobs", json={"name": "legal", "base_model": "tiny", "domain_data": [ids["domain"]],
                                               "general_data": [ids["general"]], "max_steps": 4,
                                               "eval_every": 2, "seq_len": 64}).json()["id"]
    with app.state.services.sessions.begin() as db:
        row = db.get(Job, job_id)
        row.step, row.status = 4, "succeeded"
        db.add_all([MetricPoint(job_id=job_id, step=s, values={"eval/domain_ppl": p, "eval/general_kl": k})
                    for s, p, k in [(0, 20.0, 0.0), (2, 13.0, 0.09), (4, 10.0, 0.2)]])
        db.add(JobEvent(job_id=job_id, step=4, kind="interpolation", message="interpolation of step-4",
                        data={"checkpoint": "step-4", "alphas": [r["alpha"] for r in ROWS], "rows": ROWS}))
    page.goto(f"{url}/?token=tok-a#/job/{job_id}")
    card = page.locator('[data-chart="Interpolation: domain gain against drift along α"]')
    expect(card).to_be_visible()
    expect(card.locator(".legend span")).to_have_count(2)
    assert card.locator("canvas").get_attribute("data-points") == "8"  # 3 evaluations + 5 α
    page.locator("section.interpolation").screenshot(path=SHOTS / "job-interpolation.png")
