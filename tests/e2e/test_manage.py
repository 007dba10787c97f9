"""Managing work in the dashboard (headless Chromium against a live API, no worker): the jobs list's filters,
cloning a job into the New job form (with a dataset preview there, and its forgetting budget), deleting a job
after confirming."""

from __future__ import annotations

import json

import httpx
from playwright.sync_api import expect
from test_dashboard import SHOTS, page  # noqa: F401  (page: the Chromium fixture)
from test_sweep_view import live_api  # noqa: F401  (uvicorn in a thread, SQLite, token tok-a)

from store.db import Job

DOCS = "".join(json.dumps({"text": f"Contract clause {i}: the tenant pays rent monthly."}) + "\n" for i in range(5))
JOBS = [("legal mol", "mol", "succeeded"), ("legal cpt", "cpt", "succeeded"), ("news mol", "mol", "failed"),
        ("legal lora", "mol", "cancelled"), ("medical mol", "mol", "succeeded")]


def make_jobs(url: str, app) -> dict[str, dict]:
    """The JOBS, submitted for real then ended by hand (name -> job), with a run directory each."""
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        ids = {p: client.post("/v1/datasets", data={"purpose": p}, files={"file": (f"{p}.jsonl", DOCS)}).json()["id"]
               for p in ("domain", "general")}
        jobs = {name: client.post("/v1/jobs", json={
            "name": name, "base_model": "tiny", "method": method, "domain_data": [ids["domain"]],
            "general_data": [ids["general"]], "max_steps": 12, "lr": 0.0003, "ratio": "3:1", "seq_len": 64}).json()
            for name, method, _ in JOBS}
    with app.state.services.sessions.begin() as db:
        for name, _, status in JOBS:
            row = db.get(Job, jobs[name]["id"])
            row.status, row.step = status, 12 if status == "succeeded" else 5
    for job in jobs.values():
        (app.state.services.settings.runs_dir / job["id"] / "checkpoints").mkdir(parents=True)
    return jobs


def listed(page) -> list[str]:  # noqa: F811
    return page.locator("table.jobs tbody tr td:nth-child(2)").all_inner_texts()


def test_the_filters_narrow_the_jobs_list(live_api, page):  # noqa: F811
    url, app = live_api
    make_jobs(url, app)
    page.goto(f"{url}/?token=tok-a#/jobs")
    expect(page.locator("table.jobs tbody tr")).to_have_count(len(JOBS))
    page.select_option(".filters select[name=method]", "mol")
    expect(page.locator("table.jobs tbody tr")).to_have_count(4)
    page.fill(".filters input[name=q]", "LEGAL")
    expect(page.locator("table.jobs tbody tr")).to_have_count(2)
    assert sorted(listed(page)) == ["legal lora", "legal mol"]
    page.select_option(".filters select[name=status]", "succeeded")
    expect(page.locator("table.jobs tbody tr")).to_have_count(1)
    page.screenshot(path=SHOTS / "jobs-filters.png", full_page=True)
    page.select_option(".filters select[name=status]", "running")
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()


def test_clone_fills_the_new_job_form_with_the_jobs_spec(live_api, page):  # noqa: F811
    url, app = live_api
    job = make_jobs(url, app)["legal cpt"]
    page.goto(f"{url}/?token=tok-a#/job/{job['id']}")
    page.click("[data-action=clone]")
    expect(page.locator("#new-job input[name=name]")).to_have_value("legal cpt (copy)")
    assert page.locator("#new-job input[name=max_steps]").input_value() == "12"
    assert page.locator("#new-job input[name=ratio]").input_value() == "3:1"
    assert page.locator("input[name=method][value=cpt]").is_checked()
    assert page.locator("#pick-domain").input_value() == job["spec"]["domain_data"][0]
    assert page.locator("#pick-general").input_value() == job["spec"]["general_data"][0]
    page.click("[data-preview-link=domain_data]")  # the picked dataset's first documents
    expect(page.locator("[data-preview-for=domain_data] pre.document")).to_have_count(3)
    expect(page.locator("[data-preview-for=domain_data]")).to_contain_text("Contract clause 0")
    # the forgetting budget: the schema's inputs, each refusal next to its field, kept by a clone, dropped if cleared
    expect(page.locator("#f-max_general_kl")).to_have_value("")  # no budget: empty, the spec's null
    expect(page.locator("#f-max_general_kl")).to_have_attribute("placeholder", "none")
    expect(page.locator('[data-help-for="on_budget"]')).to_contain_text("warn (an event, training goes on)")
    expect(page.locator("#f-on_budget")).to_have_value("warn")
    expect(page.locator("#f-best_metric")).to_have_value("domain_ppl")
    page.fill("#f-max_general_kl", "0")
    page.click("text=Start training")
    expect(page.locator('[data-error-for="max_general_kl"]')).to_contain_text("greater than 0")
    page.fill("#f-max_general_kl", "0.05")
    page.select_option("#f-on_budget", "stop")
    page.select_option("#f-best_metric", "qa_exact_match")  # the clone has no QA set
    page.click("text=Start training")
    expect(page.locator('[data-error-for="best_metric"]')).to_contain_text("needs eval_data")
    expect(page.locator('[data-error-for="max_general_kl"]')).to_be_empty()
    page.select_option("#f-best_metric", "domain_ppl")
    page.click("text=Start training")
    expect(page.locator("h1")).to_have_text("legal cpt (copy)")
    budgeted = page.url.rsplit("/", 1)[1]
    page.click("[data-action=clone]")
    expect(page.locator("#f-max_general_kl")).to_have_value("0.05")
    expect(page.locator("#f-on_budget")).to_have_value("stop")
    page.fill("#f-name", "no budget")
    page.fill("#f-max_general_kl", "")
    page.click("text=Start training")
    expect(page.locator("h1")).to_have_text("no budget")
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        spec = client.get(f"/v1/jobs/{budgeted}").json()["spec"]
        assert (spec["max_general_kl"], spec["on_budget"], spec["best_metric"]) == (0.05, "stop", "domain_ppl")
        cleared = client.get(f"/v1/jobs/{page.url.rsplit('/', 1)[1]}").json()["spec"]
        assert cleared["max_general_kl"] is None and cleared["on_budget"] == "stop"


def test_delete_asks_first_then_removes_the_job(live_api, page):  # noqa: F811
    url, app = live_api
    job = make_jobs(url, app)["news mol"]
    run_dir = app.state.services.settings.runs_dir / job["id"]
    page.goto(f"{url}/?token=tok-a#/job/{job['id']}")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("[data-action=delete]")
    expect(page.locator("[data-action=delete]")).to_be_enabled()
    assert run_dir.is_dir()  # dismissed: nothing deleted
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-action=delete]")
    expect(page.locator("table.jobs tbody tr")).to_have_count(len(JOBS) - 1)
    assert "news mol" not in listed(page) and not run_dir.exists()
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404

