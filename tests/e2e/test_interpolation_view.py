"""The job page's weight interpolation section: its rule in node, and the page in headless Chromium against a live
API (uvicorn in a thread, SQLite, no worker: the evaluations and the interpolation event are crafted rows)."""

from __future__ import annotations

import json
import subprocess

import httpx
from playwright.sync_api import expect
from test_dashboard import FRONTEND, SHOTS, page  # noqa: F401  (page: the Chromium fixture)
from test_sweep_view import live_api  # noqa: F401  (the live API fixture)

from api.routes import evaluations, interpolations
from store.db import Job, JobEvent, MetricPoint, SideTask

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


SIDE_TASK_RULES = """
const { pendingNote, endedKinds } = await import(`${process.argv[1]}/views/side_tasks.js`);
const pending = [{ id: "a", kind: "interpolation", status: "running" }, { id: "b", kind: "interpolation",
  status: "queued" }, { id: "c", kind: "task-evaluation", status: "queued" }];
const before = new Map([["a", "interpolation"], ["b", "interpolation"], ["c", "task-evaluation"]]);
console.log(JSON.stringify({ notes: [pendingNote(pending, "interpolation"), pendingNote(pending, "task-evaluation"),
  pendingNote([], "interpolation")], ended: [...endedKinds(before, pending.slice(0, 1))],
  none: [...endedKinds(before, pending)] }));
"""


def test_pending_side_tasks_are_told_and_an_ended_one_refreshes_its_kind():
    run = subprocess.run(["node", "--input-type=module", "-e", SIDE_TASK_RULES, str(FRONTEND)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["notes"] == ["1 running, 1 queued on a worker: the results will appear here",
                             "1 queued on a worker: the result will appear here", ""]
    assert sorted(seen["ended"]) == ["interpolation", "task-evaluation"] and seen["none"] == []


def test_results_that_land_after_the_job_ended_show_without_a_reload(live_api, page):  # noqa: F811
    """The job's stream is closed once it has ended: the page reads its pending side tasks instead, shows them as
    queued, then running, and draws each result within seconds of its landing."""
    url, app = live_api
    held = []
    for route in (interpolations, evaluations):  # no worker: each request stays queued until the test ends it
        app.dependency_overrides[route.celery_sender] = lambda: lambda *args: held.append(args)
    docs = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5))
    quiz = json.dumps({"question": "q", "choices": ["a", "b"], "answer": 1}) + "\n"
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        ids = {p: client.post("/v1/datasets", data={"purpose": p}, files={"file": ("d.jsonl", docs)}).json()["id"]
               for p in ("domain", "general")}
        task = client.post("/v1/datasets", data={"purpose": "task"}, files={"file": ("quiz.jsonl", quiz)}).json()
        job_id = client.post("/v1/jobs", json={"name": "legal", "base_model": "tiny", "domain_data": [ids["domain"]],
                                               "general_data": [ids["general"]], "max_steps": 4,
                                               "eval_every": 2, "seq_len": 64}).json()["id"]
        with app.state.services.sessions.begin() as db:
            row = db.get(Job, job_id)
            row.step, row.status = 4, "succeeded"
            db.add_all([MetricPoint(job_id=job_id, step=s, values={"eval/domain_ppl": p, "eval/general_kl": k})
                        for s, p, k in [(0, 20.0, 0.0), (4, 10.0, 0.2)]])
        (app.state.services.settings.runs_dir / job_id / "checkpoints" / "step-4").mkdir(parents=True)
        asked = client.post(f"/v1/jobs/{job_id}/evaluations", json={"task": task["id"], "checkpoints": ["base"]})
        assert asked.status_code == 202, asked.text  # asked for by another client, before the page opened
    page.goto(f"{url}/?token=tok-a#/job/{job_id}")
    expect(page.locator('.toolbar .badge[data-status="succeeded"]')).to_be_visible()
    evals_pending = page.locator('[data-pending="task-evaluation"]')
    expect(evals_pending).to_have_text("1 queued on a worker: the result will appear here")
    section = page.locator("section.interpolation")
    section.locator("input[name=checkpoint]").fill("step-4")
    section.locator("input[name=alphas]").fill("0,1")
    section.locator("[data-action=interpolate]").click()
    pending = page.locator('[data-pending="interpolation"]')
    expect(pending).to_have_text("1 queued on a worker: the result will appear here")
    (interpolation_task, evaluation_task) = (held[1][-1], held[0][-1])  # the side task ids the workers were given
    with app.state.services.sessions.begin() as db:
        db.get(SideTask, interpolation_task).status = "running"
    expect(pending).to_have_text("1 running on a worker: the result will appear here", timeout=5_000)
    page.locator("section.interpolation").screenshot(path=SHOTS / "job-interpolation-running.png")

    rows = [{"alpha": 0.0, "domain_ppl": 20.0, "general_kl": 0.0},
            {"alpha": 1.0, "domain_ppl": 10.0, "general_kl": 0.2}]
    with app.state.services.sessions.begin() as db:  # what the worker task does when it ends
        db.add(JobEvent(job_id=job_id, step=4, kind="interpolation", message="interpolation of step-4",
                        data={"checkpoint": "step-4", "alphas": [0.0, 1.0], "rows": rows}))
        db.get(SideTask, interpolation_task).status = "done"
    card = page.locator('[data-chart="Interpolation: domain gain against drift along α"]')
    expect(card).to_be_visible(timeout=5_000)  # no reload: the page saw the side task end
    assert card.locator("canvas").get_attribute("data-points") == "4"  # 2 evaluations + 2 α
    expect(pending).to_be_empty()
    with app.state.services.sessions.begin() as db:
        db.add(JobEvent(job_id=job_id, step=4, kind="task-evaluation", message="task evaluation of quiz.jsonl",
                        data={"task": task["id"], "filename": "quiz.jsonl", "kind": "multiple_choice",
                              "checkpoints": ["base"], "rows": [{"checkpoint": "base", "acc": 0.5, "acc_norm": 0.5,
                                                                  "n": 1}]}))
        db.get(SideTask, evaluation_task).status = "done"
    expect(page.locator('section.task-evaluations tr[data-checkpoint="base"] td.num').first).to_have_text(
        "0.5", timeout=5_000)
    expect(evals_pending).to_be_empty()
    page.locator("section.interpolation").screenshot(path=SHOTS / "job-interpolation-landed.png")
    page.screenshot(path=SHOTS / "job-side-tasks-landed.png", full_page=True)
