"""The playground in headless Chromium: one prompt, streamed side by side from the base model and a checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from api.app import create_app
from api.db import Job
from api.settings import Settings
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
    """(base URL, checkpoint id) of the API serving 'tiny' and alice's job with a checkpoint step-60."""
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
        yield base, f"{job.id}:step-60"
    shutil.rmtree(tmp_path / "home", ignore_errors=True)


def test_the_playground_streams_the_base_and_a_checkpoint_side_by_side(playground):
    base_url, checkpoint = playground
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: .ci/run installs it (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 820}).new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{base_url}/?token=tok#/playground")
        expect(page.locator("#model-left")).to_have_value("tiny")
        expect(page.locator("#model-right")).to_have_value(checkpoint)  # the newest checkpoint by default
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
