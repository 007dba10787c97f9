"""Labels that tell the truth: the job page's line under its title (the phase now, not a stale token-store line), the
Playground's checkpoint names and default, and the New job form's word while the demo builds; their rules in node,
the job page in headless Chromium against a live API (no worker: the job's progress is crafted rows)."""

from __future__ import annotations

import json
import subprocess

import httpx
from playwright.sync_api import expect
from test_dashboard import FRONTEND, SHOTS, page  # noqa: F401  (page: the Chromium fixture)
from test_sweep_view import live_api  # noqa: F401  (the live API fixture)

from store.db import Job, JobEvent, MetricPoint
from store.jobs import FINAL, STATUSES

RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
const root = process.argv[1];
const { words } = await import(`${root}/api.js`);
Object.assign(words, JSON.parse(process.argv[2]));  // as the app loads them after sign-in (GET /v1/vocabularies)
const { jobActions, phaseLine } = await import(`${root}/views/job.js`);
const { modelLabel, defaultModel } = await import(`${root}/views/playground.js`);
const { noModelMessage } = await import(`${root}/views/no_model.js`);
const running = { status: "running", step: 0, max_steps: 200 };
const store = (data, message) => ({ kind: "token-store", message, data });
const models = [{ id: "tiny", kind: "base" }, { id: "job_b:step-5", kind: "checkpoint", job_name: "newer",
  checkpoint: "step-5", step: 5 }, { id: "job_a:best", kind: "checkpoint", job_name: "legal", checkpoint: "best",
  step: 200 }, { id: "job_a:step-200", kind: "checkpoint", job_name: "legal", checkpoint: "step-200", step: 200 }];
console.log(JSON.stringify({
  phases: [phaseLine({ status: "queued", step: 0, max_steps: 200 }, null), phaseLine(running, null),
    phaseLine(running, store({ fraction: 0.4 }, "tokenizing d.jsonl: 40%")),
    phaseLine(running, store({ done: true }, "token store d.tokens: 812 tokens")),
    phaseLine(running, { kind: "config", message: "method=mol ..." }),
    phaseLine({ ...running, step: 50 }, store({ done: true }, "token store d.tokens: 812 tokens")),
    phaseLine({ status: "succeeded", step: 200, max_steps: 200 }, store({ done: true }, "token store"))],
  paused: [phaseLine({ status: "paused", step: 40, max_steps: 200 }, null),
    phaseLine({ ...running, step: 40, pause_requested: true }, null)],
  actions: [{ status: "succeeded" }, { status: "paused" }, { status: "running" },
    { status: "running", pause_requested: true }].map((job) => jobActions(job,
    { pause: "pause", resume: "resume", cancel: "cancel", remove: "delete" })),
  queuedAt: phaseLine({ status: "queued", step: 0, max_steps: 200, queue_position: 3,
    wait_reason: "waiting for a free worker: 2 jobs ahead" }, null),
  labels: models.map(modelLabel),
  picks: [defaultModel(models, { jobId: "job_a" }), defaultModel(models), defaultModel(models, { wanted: "tiny" }),
    defaultModel(models, { jobId: "job_gone" }), defaultModel(models.slice(0, 1))],
  demo: [noModelMessage({ state: "building", message: "The demo model is being built: pretraining step 3/30, "
    + "5 s elapsed, about 40 s left." }), noModelMessage({ state: "off" }), noModelMessage(null)],
}));
"""


def test_phase_checkpoint_and_no_model_rules():
    words = json.dumps({"job_statuses": list(STATUSES), "final_statuses": list(FINAL)})
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND), words], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    queued, starting, building, stored, ready, training, ended = seen["phases"]
    assert queued == {"phase": "queued", "text": "Waiting for a worker to take the job."}
    assert seen["queuedAt"] == {"phase": "queued",
                                "text": "Queued, #3 in line: waiting for a free worker: 2 jobs ahead."}
    assert starting["phase"] == "starting" and building == {"phase": "building", "text": "tokenizing d.jsonl: 40%",
                                                             "fraction": 0.4}
    assert stored == {"phase": "preparing", "text": "token store d.tokens: 812 tokens"}  # the latest, so not stale
    assert ready["phase"] == "starting" and "first training step comes next" in ready["text"]
    assert training == {"phase": "training", "text": "Training: step 50 of 200 (25%)."}  # the store line is gone
    assert ended is None  # the badge and the step say it
    paused, pausing = seen["paused"]
    assert paused["phase"] == "paused" and paused["text"].startswith("Paused at step 40 of 200")
    assert pausing["phase"] == "pausing" and "checkpoint is saved" in pausing["text"]
    assert seen["actions"] == [["delete"], ["resume", "cancel", "delete"], ["pause", "cancel"],
                               ["pause", "resume", "cancel"]]
    assert seen["labels"] == ["base tiny", "newer · step 5", "legal · best (step 200)", "legal · step 200"]
    assert seen["picks"] == ["job_a:best", "job_b:step-5", "tiny", "job_b:step-5", "tiny"]
    building, off, unknown = seen["demo"]
    assert not building["error"] and building["text"].startswith("The demo model is being built: pretraining step "
                                                                 "3/30, 5 s elapsed, about 40 s left.")
    assert off["error"] and "No base model on this server" in off["text"] and "mol demo" not in off["text"]
    assert unknown["error"] and "mol demo" in unknown["text"]


def test_the_job_subtitle_follows_the_run_instead_of_keeping_the_token_store_line(live_api, page):  # noqa: F811
    url, app = live_api
    docs = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5))
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        ids = {p: client.post("/v1/datasets", data={"purpose": p}, files={"file": ("d.jsonl", docs)}).json()["id"]
               for p in ("domain", "general")}
        job_id = client.post("/v1/jobs", json={"name": "legal", "base_model": "tiny", "domain_data": [ids["domain"]],
                                               "general_data": [ids["general"]], "max_steps": 200,
                                               "seq_len": 64}).json()["id"]
    with app.state.services.sessions.begin() as db:
        db.get(Job, job_id).status = "running"
        db.add(JobEvent(job_id=job_id, step=0, kind="token-store", message="tokenizing d.jsonl: 2,000 tokens, 40%",
                        data={"fraction": 0.4}))
    page.goto(f"{url}/?token=tok-a#/job/{job_id}")
    line = page.locator(".store-progress [data-phase]")
    expect(line).to_have_attribute("data-phase", "building")
    expect(page.locator(".store-progress progress")).to_have_attribute("value", "0.4")
    with app.state.services.sessions.begin() as db:
        db.add(JobEvent(job_id=job_id, step=0, kind="token-store", message="token store d.tokens: 5,000 tokens in 5 "
                        "documents", data={"done": True}))
    expect(line).to_have_text("token store d.tokens: 5,000 tokens in 5 documents")
    with app.state.services.sessions.begin() as db:
        db.get(Job, job_id).step = 50
    expect(line).to_have_text("Training: step 50 of 200 (25%).", timeout=10_000)  # the job is read every 3 s
    expect(page.locator(".store-progress")).not_to_contain_text("token store")
    with app.state.services.sessions.begin() as db:  # a training step's metrics: the line follows the stream
        db.add(MetricPoint(job_id=job_id, step=60, values={"train/lr": 1e-3, "train/domain_ce": 2.0}))
    expect(line).to_have_text("Training: step 60 of 200 (30%).")
    page.locator("section.card").first.screenshot(path=SHOTS / "job-phase-training.png")
    with app.state.services.sessions.begin() as db:
        db.get(Job, job_id).status = "succeeded"
    expect(line).to_have_count(0, timeout=10_000)  # ended: the badge and the step say it
