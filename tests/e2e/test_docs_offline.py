"""/docs (Swagger UI) and /redoc render in headless Chromium with every non-loopback request refused: no CDN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright

from api.app import create_app
from store.settings import Settings
from tests.e2e.test_dashboard import CHROMIUM, FLAGS, SHOTS
from tests.live_server import serving

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


@pytest.fixture(scope="module")
def docs_app(tmp_path_factory):
    """The API on SQLite with no worker; alice's token is ``tok``."""
    home = tmp_path_factory.mktemp("docs")
    return create_app(Settings(home=home / "home", models_dir=home / "models", demo_model=False, tokens="alice:tok"),
                      enqueue=lambda _job_id: None)


@pytest.fixture(scope="module")
def base_url(docs_app) -> Iterator[str]:
    """``docs_app`` served by uvicorn in a thread."""
    with serving(docs_app) as base:
        yield base


@pytest.fixture
def offline_page():
    """(page, refused): a Chromium page whose requests off this machine are aborted, and the URLs refused."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: .ci/run installs it (apt-get install chromium)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    refused: list[str] = []

    def only_loopback(route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            refused.append(url)
            route.abort("internetdisconnected")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route("**/*", only_loopback)
        page = context.new_page()
        page.set_default_timeout(60_000)
        crashes: list[str] = []
        page.on("pageerror", lambda error: crashes.append(str(error)))
        yield page, refused
        assert crashes == []
        browser.close()


def operation_count(base_url: str) -> int:
    import httpx

    document = httpx.get(f"{base_url}/openapi.json").json()
    return sum(len(operations) for operations in document["paths"].values())


def test_swagger_ui_lists_every_operation_offline(base_url, offline_page):
    page, refused = offline_page
    page.goto(f"{base_url}/docs")
    expect(page.locator(".opblock")).to_have_count(operation_count(base_url))
    expect(page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}/events")).to_be_visible()
    expect(page.locator("button.authorize")).to_be_visible()  # the bearer scheme: paste a token once
    page.screenshot(path=SHOTS / "docs-swagger.png")
    assert refused == []


def test_redoc_renders_offline(base_url, offline_page):
    page, refused = offline_page
    page.goto(f"{base_url}/redoc")
    expect(page.locator("h1", has_text="MoL Studio")).to_be_visible()
    expect(page.locator("[data-section-id^='operation/']")).to_have_count(operation_count(base_url))
    page.screenshot(path=SHOTS / "docs-redoc.png")
    assert refused == []  # its CDN logo is refused by the page's Content-Security-Policy before any request
