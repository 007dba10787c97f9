"""The dashboard in headless Firefox: Debian's firefox-esr over WebDriver BiDi, driven by puppeteer-core (node):
a job run by `mol up`, and (against an API in a thread, no worker) /docs and /redoc offline and managing jobs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
from test_manage import JOBS, make_jobs
from test_sweep_view import live_api  # noqa: F401  (uvicorn in a thread, SQLite, token tok-a)

FIREFOX = Path("/usr/bin/firefox-esr")
DRIVER = Path(__file__).resolve().parent / "firefox"
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"


def test_jobs_new_job_and_live_job_page_work_in_firefox(service, tmp_path):
    assert FIREFOX.exists(), "Debian's firefox-esr is missing: .ci/run installs it (scripts/ensure-firefox)"
    assert (DRIVER / "node_modules" / "puppeteer-core").is_dir(), "scripts/ensure-firefox installs puppeteer-core"
    client, demo = service.client, service.home / "demo"
    ids = {}
    for purpose in ("domain", "general", "eval"):
        # the demo registered these very files; one repeated line makes each a new upload (a stored twin would
        # answer 200 with the demo's dataset, whose cache lives in the shared demo build, not under this home)
        data = (demo / f"{purpose}.jsonl").read_bytes()
        data += data.splitlines(keepends=True)[0]
        response = client.post("/v1/datasets", data={"purpose": purpose}, files={"file": (f"{purpose}.jsonl", data)})
        assert response.status_code == 201, response.text
        ids[purpose] = response.json()["id"]
    # a MoL job on the cached reference: the worker builds the cache next to the stored general dataset
    spec = {"name": "firefox-mol", "base_model": "demo", "domain_data": [ids["domain"]],
            "general_data": [ids["general"]], "eval_data": ids["eval"], "reference": "cached", "seq_len": 64,
            "batch_size": 8, "lr": 3e-3, "max_steps": 8, "eval_every": 4, "save_every": 8, "eval_batches": 1,
            "qa_max_new_tokens": 3}
    job = client.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops}\n')
    SHOTS.mkdir(parents=True, exist_ok=True)

    run = subprocess.run(["node", str(DRIVER / "dashboard.mjs"), service.url, "firefox-mol", str(SHOTS), str(broken)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["token_left_url"] and seen["jobs"] == 1 and seen["page_errors"] == []
    assert float(seen["default_lr"]) == 3e-3  # the demo model starts on examples/demo-mol.yaml's numbers
    assert seen["default_general"].startswith("demo-general.jsonl")  # the demo model starts on the demo's corpora
    assert "broken.jsonl, line 2: invalid JSON" in seen["refused_upload"]
    assert seen["advanced_fields"] >= 20 and seen["yaml_seed"] == "4"  # the YAML view's edit, applied to the form
    assert seen["points"] == 8 and seen["eval_points"] == 3 and seen["canvases"] >= 1 and seen["eval_charts"] >= 6
    events = client.get(f"/v1/jobs/{job.json()['id']}/events").json()
    assert any(e["kind"] == "reference-cache" for e in events), events
    assert list((service.home / "datasets").glob("*.mol-cache/topk-*/meta.json"))  # next to the stored dataset


def test_docs_offline_and_managing_jobs_work_in_firefox(live_api):  # noqa: F811
    """What test_docs_offline.py and test_manage.py check in Chromium, in one Firefox start."""
    assert FIREFOX.exists(), "Debian's firefox-esr is missing: .ci/run installs it (scripts/ensure-firefox)"
    url, app = live_api
    jobs = make_jobs(url, app)
    operations = sum(map(len, httpx.get(f"{url}/openapi.json").json()["paths"].values()))
    SHOTS.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["node", str(DRIVER / "manage.mjs"), url, "tok-a", str(SHOTS), str(operations),
                          jobs["legal cpt"]["id"], jobs["news mol"]["id"]],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["offsite"] == [] and seen["page_errors"] == []  # rendered with every request on this machine
    assert all("cdn.redoc.ly" in blocked for blocked in seen["csp_blocked"])  # ReDoc's logo, refused before a request
    assert seen["swagger_operations"] == seen["redoc_operations"] == operations and seen["swagger_authorize"] == 1
    assert "MoL Studio" in seen["redoc_title"]
    assert seen["filtered"] == ["legal mol"]
    assert seen["clone_name"] == "legal cpt (copy)" and seen["clone_method"] == "cpt"
    assert len(seen["preview"]) == 3 and "Contract clause 0" in seen["preview"][0]
    assert seen["after_dismiss"] == f"#/job/{jobs['news mol']['id']}"  # dismissed: still on the job
    assert sorted(seen["after_delete"]) == sorted(name for name, _, _ in JOBS if name != "news mol")
    assert not (app.state.services.settings.runs_dir / jobs["news mol"]["id"]).exists()
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        assert client.get(f"/v1/jobs/{jobs['news mol']['id']}").status_code == 404
