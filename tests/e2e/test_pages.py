"""The dashboard's Datasets, Sweeps, Workers and job log pages, and a job's tracker links, in headless Chromium
against one live API (uvicorn in a thread, no worker: the workers, log lines and tracker files are crafted), and
the pages' pure rules in node."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta

import httpx
from playwright.sync_api import expect
from test_dashboard import FRONTEND, SHOTS, page  # noqa: F401  (page: the Chromium fixture)
from test_sweep_view import crafted_sweep, live_api  # noqa: F401  (live_api: the API fixture)

from mol_engine.token_store import PREFIX, cache_root
from store.db import Dataset, Job, WorkerSeen, utcnow

RULES = """
const { parseValues, gridOf, countLine } = await import(`${process.argv[1]}/views/sweeps.js`);
const { shownText, keepTail } = await import(`${process.argv[1]}/views/job_files.js`);
const rows = [{ key: "ratio", values: parseValues(" 4:1, 1:1 ,, 1:2") },
  { key: "kl_weight", values: parseValues("0.5,1e-1") }, { key: "lr", values: [] }];
console.log(JSON.stringify({ rows, grid: gridOf(rows), line: countLine(gridOf(rows), 4), none: countLine(gridOf([]), 4),
  shown: shownText("a\\rprogress 10%\\rprogress 100%\\r\\nnext line\\n"), tail: keepTail("one\\ntwo\\nthree\\n", 8) }));
"""


def test_the_grid_editor_counts_jobs_and_the_log_shows_what_a_terminal_would():
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["rows"][0]["values"] == ["4:1", "1:1", "1:2"] and seen["rows"][1]["values"] == [0.5, 0.1]
    assert seen["grid"] == {"grid": {"ratio": ["4:1", "1:1", "1:2"], "kl_weight": [0.5, 0.1]}, "sizes": [3, 2],
                            "count": 6}  # a field without values is left out
    assert seen["line"] == {"text": "3 × 2 = 6 jobs (at most 4 on this server: remove values)", "ok": False}
    assert seen["none"]["ok"] is False
    assert seen["shown"] == "progress 100%\nnext line\n"  # a progress bar's last state, as a terminal shows it
    assert seen["tail"] == {"text": "three\n", "cut": True}  # from a line's start


def craft(url: str, app) -> dict:
    """A finished 2 x 2 sweep, one of its jobs running again on a worker with a log and a TensorBoard folder, a
    token store of its domain corpus, a gone worker, and an unused dataset."""
    sweep = crafted_sweep(url, app)
    running = sweep["data"][0]
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        spare = client.post("/v1/datasets", data={"purpose": "prompts"},
                            files={"file": ("spare.jsonl", '{"prompt": "Tell me about contracts."}\n')}).json()
        domain_id = client.get(f"/v1/jobs/{running['id']}").json()["spec"]["domain_data"][0]
    svc = app.state.services
    with svc.sessions.begin() as db:
        row = db.get(Job, running["id"])  # running under a live lease, which the API's lease sweeper leaves alone
        row.status, row.lease_owner, row.heartbeat_at = "running", "gpu-host:4243", utcnow()
        domain = db.get(Dataset, domain_id)
        db.add_all([WorkerSeen(name="gpu-host:4242", last_seen=utcnow(), capacity=2, job_id=running["id"],
                               device="cuda: 2 x NVIDIA H100 80GB HBM3 (GPUs 0,1)"),
                    WorkerSeen(name="old-host:77", last_seen=utcnow() - timedelta(minutes=30), device="cpu (8 cores)")])
    store = cache_root(domain.path) / f"{PREFIX}tiny"
    store.mkdir(parents=True)
    (store / "meta.json").write_text(json.dumps({"tokenizer": "tiny", "tokens": 12345, "documents": 5,
                                                 "dtype": "uint16", "vocab_size": 512}))
    run = svc.settings.runs_dir / running["id"]
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"\0" * 2048)
    svc.settings.job_log_file(running["id"]).write_text(
        "[2026-01-01T10:00:00+00:00] worker gpu-host:4242 (cuda: 2 x NVIDIA H100) starts the job's runner\n"
        "Loading weights: 10%\rLoading weights: 100%\n"
        f"[config] domain {domain.path}\n[step 1] loss=3.2\n")
    return {"sweep": sweep, "job": running, "domain": domain, "spare": spare}


def test_datasets_sweeps_workers_and_a_job_s_log_and_trackers(live_api, page):  # noqa: F811
    url, app = live_api
    made = craft(url, app)
    job, domain = made["job"], made["domain"]
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{url}/?token=tok-a#/jobs")
    expect(page.locator("#who")).to_contain_text("signed in as alice")

    # Datasets: listed with their token stores; a preview; delete (refused while a job runs on it, with the reason)
    page.click("header nav >> text=Datasets")
    expect(page.locator("tr[data-dataset]")).to_have_count(3)
    row = page.locator(f"tr[data-dataset='{domain.id}']")
    expect(row.locator("[data-stores]")).to_contain_text("12,345 tokens · 5 docs")
    row.locator("[data-action=preview]").click()
    expect(page.locator(f"tr[data-preview-of='{domain.id}'] pre.document")).to_have_count(5)
    expect(page.locator(f"tr[data-preview-of='{domain.id}']")).to_contain_text("document 0")
    page.screenshot(path=SHOTS / "datasets.png", full_page=True)
    row.locator("[data-action=delete]").click()
    expect(page.locator("[role=alert]")).to_contain_text(f"is used by active job(s) {job['id']}")
    page.screenshot(path=SHOTS / "datasets-delete-refused.png")
    page.locator(f"tr[data-dataset='{made['spare']['id']}'] [data-action=delete]").click()
    expect(page.locator("tr[data-dataset]")).to_have_count(2)

    # Workers: alive first, device, capacity, the job it runs, heartbeats
    page.click("header nav >> text=Workers")
    expect(page.locator("tr[data-worker]")).to_have_count(2)
    alive = page.locator("tr[data-worker='gpu-host:4242']")
    expect(alive).to_have_attribute("data-alive", "yes")
    expect(alive.locator("[data-col=device]")).to_have_text("cuda: 2 x NVIDIA H100 80GB HBM3 (GPUs 0,1)")
    expect(alive.locator("[data-col=job] a")).to_have_text(job["name"])
    expect(page.locator("tr[data-worker]").last).to_contain_text("gone")
    expect(page.locator("[data-summary]")).to_contain_text("1 alive")
    page.screenshot(path=SHOTS / "workers.png", full_page=True)

    # A job's log, tailed live; its trackers linked from the job page
    alive.locator("[data-col=job] a").click()
    trackers = page.locator("[data-tracker=tensorboard]")
    expect(trackers).to_contain_text(f"tensorboard --logdir {job['id']}-tensorboard")
    expect(trackers.locator("a")).to_have_attribute("href", f"/v1/jobs/{job['id']}/trackers/tensorboard/download")
    page.screenshot(path=SHOTS / "job-trackers.png", full_page=True)
    page.click("[data-action=log]")
    log = page.locator("pre[data-log]")
    expect(log).to_contain_text("[step 1] loss=3.2")
    expect(log).to_contain_text(f"[config] domain d.jsonl ({domain.id})")  # no server path
    assert "Loading weights: 100%" in log.inner_text() and "10%" not in log.inner_text()
    with app.state.services.settings.job_log_file(job["id"]).open("a") as handle:
        handle.write("[step 2] loss=2.9\n")
    expect(log).to_contain_text("[step 2] loss=2.9", timeout=10_000)  # live, without a reload
    page.screenshot(path=SHOTS / "job-log.png", full_page=True)

    # Sweeps: listed; a new one from the grid editor, bounded by the server's cap, opens in the Pareto view
    app.state.services.settings.max_sweep_jobs = 6
    page.click("header nav >> text=Sweeps")
    expect(page.locator("tr[data-sweep-row]")).to_have_count(1)
    count = page.locator("[data-job-count]")
    expect(count).to_have_text("3 jobs (at most 6 on this server)")
    page.select_option("#sweep-from", job["id"])
    page.wait_for_function("document.querySelector('#sweep-base').value.includes('\"ratio\"')")
    page.click("[data-action=add-field]")
    page.locator("[data-grid-row]").last.locator("select").select_option("ratio")
    page.locator("[data-grid-row]").last.locator("input").fill("4:1, 1:1, 1:2")
    expect(count).to_have_text("3 × 3 = 9 jobs (at most 6 on this server: remove values)")
    expect(page.locator("[data-new-sweep] button[type=submit]")).to_be_disabled()
    page.locator("[data-grid-row]").last.locator("input").fill("4:1, 1:1")
    expect(count).to_have_text("3 × 2 = 6 jobs (at most 6 on this server)")
    page.fill("#sweep-name", "grid test")
    page.screenshot(path=SHOTS / "sweeps.png", full_page=True)
    page.click("[data-new-sweep] button[type=submit]")
    expect(page.locator("h1")).to_have_text("Sweep grid test")
    expect(page.locator("[data-sweep-table] tbody tr")).to_have_count(6)
