"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against `mol up`."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page():
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: .ci/run installs it (apt-get install chromium)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def upload(page, purpose: str, path: Path) -> None:
    before = page.locator(f"#pick-{purpose} option").count()
    page.set_input_files(f"#file-{purpose}", str(path))
    expect(page.locator(f"#pick-{purpose} option")).to_have_count(before + 1)


def test_submit_watch_compare_download(service, page, tmp_path):
    demo = service.home / "demo"
    page.goto(service.url)
    expect(page.locator("#who")).to_contain_text("signed in as local")
    assert "token=" not in page.url  # the token left the address bar
    expect(page.locator(".empty")).to_contain_text("No jobs yet")

    page.click("text=New job")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    page.set_input_files("#file-domain", str(bad))
    expect(page.locator('[data-error-for="domain_data"]')).to_contain_text("broken.jsonl, line 2: invalid JSON")
    for purpose in ("domain", "general", "eval"):
        upload(page, purpose, demo / f"{purpose}.jsonl")
    page.fill("#f-name", "demo-mol")
    for field, value in {"seq_len": "64", "batch_size": "8", "max_steps": "40", "eval_every": "5",
                         "save_every": "20", "lr": "0.003", "kl_weight": "-1"}.items():
        page.fill(f"#f-{field}", value)
    page.click("text=Start training")  # kl_weight -1 is refused next to its field
    expect(page.locator('[data-error-for="kl_weight"]')).to_contain_text("kl_weight: Input should be greater")
    page.fill("#f-kl_weight", "1")
    page.click("text=Start training")
    expect(page.locator("tr[data-job]")).to_have_count(2)
    page.screenshot(path=SHOTS / "jobs-list.png", full_page=True)

    page.get_by_role("link", name="demo-mol", exact=True).click()
    training = page.locator('[data-chart="Training cross-entropy"]')
    points = "+document.querySelector('[data-chart=\"Training cross-entropy\"]')?.dataset.points"
    page.wait_for_function(f"() => {points} > 0")
    first = int(training.get_attribute("data-points"))
    page.wait_for_function(f"() => {points} > {first}")  # the chart gains points while the job runs
    assert page.locator(".badge").first.inner_text() in ("running", "succeeded")
    page.screenshot(path=SHOTS / "job-running.png", full_page=True)

    page.goto(service.url.split("?")[0] + "#/jobs")
    expect(page.locator('.badge[data-status="succeeded"]')).to_have_count(2, timeout=240_000)
    for box in page.locator("tr[data-job] input[type=checkbox]").all():
        box.check()
    page.click("text=Compare selected (2)")
    expect(page.locator('[data-chart="KL to the base on held-out general text"]')).to_be_visible()
    legend = page.locator('[data-chart="KL to the base on held-out general text"] .u-legend .u-series')
    expect(legend).to_have_count(3)  # step + the two jobs
    expect(page.locator('[data-chart="Domain gain against general drift"] .legend span')).to_have_count(2)
    page.screenshot(path=SHOTS / "compare.png", full_page=True)

    page.get_by_role("link", name="demo-mol", exact=True).first.click()
    expect(page.locator("h1")).to_have_text("demo-mol")
    expect(page.locator('.toolbar .badge[data-status="succeeded"]')).to_be_visible()
    page.wait_for_function("() => +document.querySelector('[data-chart=\"QA exact match\"]')?.dataset.points >= 9")
    expect(page.locator("[data-disk]")).to_have_text(re.compile(r"[\d.]+ [KMG]iB on disk, 2 checkpoints"))
    page.screenshot(path=SHOTS / "job-finished.png", full_page=True)
    with page.expect_download() as info:
        page.locator("[data-download]").last.click()
    archive = tmp_path / "checkpoint.tar.gz"
    info.value.save_as(archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(n.endswith("config.json") for n in names) and any(n.endswith(".safetensors") for n in names)
