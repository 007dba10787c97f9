"""Task evaluations in the dashboard: the score Compare shows, computed in node from crafted evaluations; the job
page's card and Compare's row in headless Chromium against a live API (no worker: the event is a crafted row)."""

from __future__ import annotations

import json
import subprocess

import httpx
from playwright.sync_api import expect
from test_dashboard import FRONTEND, SHOTS, page  # noqa: F401  (page: the Chromium fixture)
from test_sweep_view import live_api  # noqa: F401  (the live API fixture)

from store.db import Job, JobEvent

RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
await import(`${process.argv[1]}/views/job.js`);
await import(`${process.argv[1]}/views/compare.js`);
const { latestTaskScore } = await import(`${process.argv[1]}/views/task_evals.js`);
const mc = { task: "ds_1", filename: "quiz.jsonl", kind: "multiple_choice", error: null, rows: [
  { checkpoint: "base", acc: 0.25, acc_norm: 0.5, n: 4 }, { checkpoint: "step-10", acc: 0.75, acc_norm: 0.5, n: 4 },
  { checkpoint: "step-2", acc: 0.5, acc_norm: 0.25, n: 4 }] };
const em = { task: "ds_2", filename: "em.jsonl", kind: "exact_match", error: null, rows: [
  { checkpoint: "base", error: "TaskError: boom" }, { checkpoint: "step-4", exact_match: 1, n: 1 }] };
const failed = { task: "ds_3", filename: null, kind: null, rows: null, error: "DataError: gone" };
console.log(JSON.stringify([latestTaskScore([mc, failed]), latestTaskScore([mc, em]), latestTaskScore([failed])]));
"""


def test_the_latest_task_score_is_the_last_checkpoints_beside_the_base():
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    mc, em, none = json.loads(run.stdout)
    assert mc == {"task": "quiz.jsonl", "metric": "acc", "score": 0.75, "checkpoint": "step-10", "base": 0.25}
    assert em == {"task": "em.jsonl", "metric": "exact_match", "score": 1, "checkpoint": "step-4", "base": None}
    assert none is None


def test_the_job_page_lists_the_rows_and_compare_the_latest_score(live_api, page):  # noqa: F811
    url, app = live_api
    docs = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5))
    quiz = json.dumps({"question": "q", "choices": ["a", "b"], "answer": 1}) + "\n"
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        ids = {p: client.post("/v1/datasets", data={"purpose": p}, files={"file": ("d.jsonl", docs)}).json()["id"]
               for p in ("domain", "general")}
        task = client.post("/v1/datasets", data={"purpose": "task"}, files={"file": ("quiz.jsonl", quiz)}).json()
        job_id = client.post("/v1/jobs", json={"name": "legal", "base_model": "tiny", "domain_data": [ids["domain"]],
                                               "general_data": [ids["general"]], "max_steps": 4,
                                               "seq_len": 64}).json()["id"]
    rows = [{"checkpoint": "base", "acc": 0.25, "acc_norm": 0.5, "n": 4},
            {"checkpoint": "step-4", "acc": 0.75, "acc_norm": 0.5, "n": 4}]
    with app.state.services.sessions.begin() as db:
        db.get(Job, job_id).status = "succeeded"
        db.add(JobEvent(job_id=job_id, step=4, kind="task-evaluation", message="task evaluation of quiz.jsonl",
                        data={"task": task["id"], "filename": "quiz.jsonl", "kind": "multiple_choice",
                              "checkpoints": ["base", "step-4"], "rows": rows}))
    page.goto(f"{url}/?token=tok-a#/job/{job_id}")
    card = page.locator("section.task-evaluations")
    expect(card.locator('tr[data-checkpoint="step-4"] td.num').first).to_have_text("0.75")
    expect(card.locator('tr[data-checkpoint="base"] td.num').first).to_have_text("0.25")
    expect(card.locator("select[name=task] option")).to_have_text(["quiz.jsonl (1 questions)"])
    card.screenshot(path=SHOTS / "job-task-evaluations.png")
    page.goto(f"{url}/?token=tok-a#/compare?ids={job_id}")
    scores = page.locator("[data-task-scores]")
    expect(scores.locator("td[data-task-score]")).to_contain_text("acc 0.75 at step-4 (base 0.25)")
    scores.screenshot(path=SHOTS / "compare-task-score.png")
