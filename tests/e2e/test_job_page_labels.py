"""The job page's labels: as pure rules in node, what a checkpoint's download buttons say (full weights: one
"Download"; a LoRA checkpoint: merged and adapter) and why a job its budget stopped ended; in headless Chromium
against a live API (no worker: the jobs and checkpoints are crafted), the badge such a job has of its own in the
jobs list and on its page, never a plain green "succeeded"; and a job continued from another's best checkpoint, its
curve and its lineage (parent link, checkpoint, original base) on its page and in Compare."""

from __future__ import annotations

import json
import re
import subprocess

import httpx
from playwright.sync_api import expect
from test_dashboard import FRONTEND, SHOTS, page  # noqa: F401  (page: the Chromium fixture)
from test_sweep_view import live_api  # noqa: F401  (the live API fixture)

from store.db import Job, MetricPoint

RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
const { downloadChoices, stopReason } = await import(`${process.argv[1]}/views/job.js`);
const stopped = { stop_reason: "budget", step: 60, max_steps: 400, spec: { max_general_kl: 0.1, budget_patience: 3 } };
console.log(JSON.stringify({ downloads: { full: downloadChoices("full"), adapter: downloadChoices("adapter") },
  none: stopReason(stopped, [{ name: "step-50", best: false }]),
  best: stopReason(stopped, [{ name: "step-20", best: true }, { name: "step-60", best: false }]),
  finished: stopReason({ ...stopped, stop_reason: null }, []) }));
"""


def rules() -> dict:
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_a_full_checkpoint_is_offered_as_download_and_a_lora_one_as_merged_and_adapter():
    downloads = rules()["downloads"]
    assert downloads["full"] == [["merged", "Download"]]  # full weights: nothing was merged
    assert downloads["adapter"] == [["merged", "Download merged"], ["adapter", "Download adapter"]]


def test_a_budget_stop_says_why_and_whether_a_checkpoint_is_within_the_budget():
    seen = rules()
    assert seen["none"] == ("Stopped at step 60 of 400: the KL to the base stayed over the forgetting budget "
                            "(max_general_kl 0.1) for 3 evaluations in a row. No checkpoint is within the budget: "
                            "every one kept is over it (a higher kl_weight, or a lower learning rate, keeps the KL "
                            "lower).")
    assert seen["best"].endswith("The best checkpoint within the budget is step-20 (marked best below).")
    assert seen["finished"] is None


def test_a_job_its_budget_stopped_has_its_own_badge_and_a_continued_one_its_lineage(live_api, page):  # noqa: F811
    url, app = live_api
    docs = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5))
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        ids = {p: client.post("/v1/datasets", data={"purpose": p}, files={"file": ("d.jsonl", docs)}).json()["id"]
               for p in ("domain", "general")}
        spec = {"base_model": "tiny", "domain_data": [ids["domain"]], "general_data": [ids["general"]],
                "max_steps": 400, "eval_every": 20, "seq_len": 64, "max_general_kl": 0.1, "on_budget": "stop"}
        stopped, finished = (client.post("/v1/jobs", json=spec | {"name": name}).json()["id"]
                             for name in ("over-budget", "went-to-the-end"))
    runs = app.state.services.settings.runs_dir
    with app.state.services.sessions.begin() as db:
        for job_id, step, reason in ((stopped, 60, "budget"), (finished, 400, None)):
            row = db.get(Job, job_id)
            row.step, row.status, row.stop_reason = step, "succeeded", reason
            db.add_all([MetricPoint(job_id=job_id, step=s, values={"eval/domain_ppl": 20.0 - s / 10,
                                                                     "eval/general_kl": kl})
                        for s, kl in ((0, 0.0), (20, 0.12), (40, 0.15), (60, 0.2))])
            model = runs / job_id / "checkpoints" / f"step-{step}" / "model"  # full weights, none within the budget
            model.mkdir(parents=True)
            (model / "config.json").write_text('{"model_type": "llama"}')
            (model.parent / "trainer_state.json").write_text(json.dumps({"step": step}))
    (runs / finished / "best.json").write_text(json.dumps({"step": 400}))
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        continued = client.post("/v1/jobs", json=spec | {"name": "continued", "base_model": f"job:{finished}@best",
                                                         "max_general_kl": None}).json()
    assert (continued["parent_checkpoint"], continued["original_base_model"]) == ("step-400", "tiny")
    with app.state.services.sessions.begin() as db:
        db.get(Job, continued["id"]).status = "succeeded"
        db.add_all([MetricPoint(job_id=continued["id"], step=s, values={"eval/domain_ppl": ppl, "eval/general_kl": kl})
                    for s, ppl, kl in ((0, 12.0, 0.2), (20, 11.0, 0.1))])  # it starts where its parent ended

    page.goto(f"{url}/?token=tok-a#/jobs")
    badge = page.locator(f'tr[data-job="{stopped}"] .badge')
    expect(badge).to_have_text("stopped: over budget")  # before: a green "succeeded", like the run beside it
    assert "over-budget" in badge.get_attribute("class") and badge.get_attribute("data-stop-reason") == "budget"
    expect(page.locator(f'tr[data-job="{finished}"] .badge')).to_have_text("succeeded")
    page.locator("table.jobs").screenshot(path=SHOTS / "jobs-over-budget.png")

    page.goto(f"{url}/?token=tok-a#/job/{stopped}")
    expect(page.locator(".toolbar .badge")).to_have_text("stopped: over budget")
    expect(page.locator("p[data-stop-reason=budget]")).to_contain_text("No checkpoint is within the budget")
    expect(page.locator("[data-download]")).to_have_text("Download")  # full weights: not "Download merged"
    page.locator("section.card").first.screenshot(path=SHOTS / "job-over-budget.png")
    page.locator("table.checkpoints").screenshot(path=SHOTS / "job-full-checkpoint-download.png")

    # the New job form explains the early rise under the budget (its help is the spec's description), and it and
    # the playground read the models from GET /v1/models' OpenAI list
    page.goto(f"{url}/?token=tok-a#/new")
    help_text = page.locator('[data-help-for="max_general_kl"]')
    expect(help_text).to_contain_text("Under MoL the KL rises in the first steps, then falls")
    expect(page.locator("#base_model option")).to_have_text(["tiny (llama)"])
    help_text.locator("xpath=ancestor::fieldset").screenshot(path=SHOTS / "new-job-budget-help.png")
    page.goto(f"{url}/?token=tok-a#/playground")
    expect(page.locator("select").first.locator("option").first).to_have_text(re.compile("tiny"))

    # a job continued from its parent's best checkpoint: its curve, and its lineage on its page and in Compare
    page.goto(f"{url}/?token=tok-a#/job/{continued['id']}")
    lineage = page.locator("[data-lineage]")
    expect(lineage).to_contain_text(f"Continued from {finished} at step-400 · original base tiny · KL anchored to tiny")
    assert lineage.locator("a[data-parent]").get_attribute("href") == f"#/job/{finished}"
    page.wait_for_function("() => +document.querySelector('[data-chart^=\"Domain perplexity\"]')?.dataset.points"
                           " === 2")
    page.screenshot(path=SHOTS / "job-continued-lineage.png")
    page.goto(f"{url}/?token=tok-a#/compare?ids={finished},{continued['id']}")
    expect(page.locator("table[data-summary] th [data-lineage]")).to_have_count(1)  # the parent has none
    page.locator("table[data-summary]").screenshot(path=SHOTS / "compare-continued-lineage.png")
