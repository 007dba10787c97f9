"""The playground in headless Chromium: one prompt, streamed side by side from the base model and a checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from api.app import create_app
from store.db import Job
from store.settings import Settings
from tests.e2e.test_dashboard import CHROMIUM, FLAGS, SHOTS
from tests.live_server import serving


def other_weights(base: Path, dest: Path) -> Path:
    """A model of ``base``'s shape and tokenizer with other random weights: a checkpoint that completes otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            weight.normal_(0, 0.5)  # far from the near-zero init, whose greedy text repeats the prompt's last token
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(base).save_pretrained(dest)
    return dest


@pytest.fixture
def playground(tiny_model_dir, tmp_path):
    """(base URL, checkpoint id, app) of the API serving 'tiny' and alice's job with a checkpoint step-60."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_model_dir)
    app = create_app(Settings(home=tmp_path / "home", models_dir=tmp_path / "models", demo_model=False,
                              tokens="alice:tok"), enqueue=lambda _job_id: None)
    with app.state.services.sessions.begin() as db:
        job = Job(owner="alice", name="arithmetic", spec={"base_model": "tiny"}, max_steps=60, status="succeeded")
        db.add(job)
    checkpoint = app.state.services.settings.runs_dir / job.id / "checkpoints" / "step-60"
    other_weights(tiny_model_dir, checkpoint / "model")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 60}))
    with serving(app) as base:
        yield base, f"{job.id}:step-60", app
    shutil.rmtree(tmp_path / "home", ignore_errors=True)


def test_the_playground_streams_the_base_and_a_checkpoint_side_by_side(playground):
    base_url, checkpoint, _app = playground
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: .ci/run installs it (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 820}).new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{base_url}/?token=tok#/playground")
        expect(page.locator("#model-left")).to_have_value("tiny")
        expect(page.locator("#model-right")).to_have_value(checkpoint)  # the newest checkpoint by default
        # checkpoints go by their job's name, not by `job_…:step-60`
        expect(page.locator("#model-right option:checked")).to_have_text("arithmetic · step 60")
        page.fill("#prompt", "Question: What is 3 plus 4?\nAnswer:")
        page.click("text=Generate")
        for side in ("left", "right"):
            expect(page.locator(f'[data-pane="{side}"]')).to_have_attribute("data-state", "done")
            expect(page.locator(f'[data-completion="{side}"]')).not_to_be_empty()
            expect(page.locator(f'[data-status-for="{side}"]')).to_contain_text("pieces in")
        left = page.locator('[data-completion="left"]').inner_text()
        assert left != page.locator('[data-completion="right"]').inner_text()  # two models, two completions
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / "playground.png")
        browser.close()


def test_a_jobs_try_in_playground_starts_on_its_best_checkpoint_named_by_the_job(playground):
    """The job page's "Try in playground" opens the playground on that job's `best` (the models list puts a job's
    best first, with its name and step), labelled by the job's name; another job's newer checkpoint is not picked."""
    base_url, checkpoint, app = playground
    job_id = checkpoint.split(":")[0]
    runs = app.state.services.settings.runs_dir
    (runs / job_id / "best.json").write_text(json.dumps({"step": 60}))
    with app.state.services.sessions.begin() as db:  # a newer job, whose checkpoint a plain visit starts on
        newer = Job(owner="alice", name="newer", spec={"base_model": "tiny"}, max_steps=5, status="succeeded")
        db.add(newer)
    (runs / newer.id / "checkpoints" / "step-5").mkdir(parents=True)
    (runs / newer.id / "checkpoints" / "step-5" / "trainer_state.json").write_text(json.dumps({"step": 5}))
    headers = {"Authorization": "Bearer tok"}
    listed = httpx.get(f"{base_url}/v1/models?include=checkpoints", headers=headers).json()
    models = listed["data"] if isinstance(listed, dict) else listed  # a bare list, or OpenAI's list object
    mine = [(m["id"], m["job_name"], m["checkpoint"], m["step"]) for m in models if m["kind"] == "checkpoint"]
    assert mine == [(f"{newer.id}:step-5", "newer", "step-5", 5), (f"{job_id}:best", "arithmetic", "best", 60),
                    (checkpoint, "arithmetic", "step-60", 60)]  # newest job first, a job's best before its steps
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 820}).new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{base_url}/?token=tok#/job/{job_id}")
        page.click("[data-action=playground]")
        expect(page.locator("#model-right")).to_have_value(f"{job_id}:best")
        expect(page.locator("#model-right option:checked")).to_have_text("arithmetic · best (step 60)")
        assert "job_" not in " ".join(page.locator("#model-right option").all_inner_texts())
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / "playground-from-job.png")
        browser.close()
