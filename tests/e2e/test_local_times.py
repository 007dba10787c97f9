"""The dashboard shows the API's UTC timestamps in the viewer's time zone (headless Chromium set to Tokyo)."""

from __future__ import annotations

from datetime import UTC, datetime

from playwright.sync_api import expect, sync_playwright

from store.db import Job, JobEvent
from tests.e2e.test_dashboard import CHROMIUM, FLAGS
from tests.e2e.test_docs_offline import base_url, docs_app  # noqa: F401 (fixtures: the API served by uvicorn)

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # 12:04:05 in Tokyo (UTC+9, no daylight saving)


def test_jobs_list_and_event_log_show_local_times(docs_app, base_url):  # noqa: F811
    with docs_app.state.services.sessions() as db:
        db.add(Job(id="job_localtimes", owner="alice", name="t", spec={"method": "mol", "base_model": "tiny"},
                   status="cancelled", max_steps=5, created_at=AT, finished_at=AT))
        db.add(JobEvent(job_id="job_localtimes", step=0, kind="cancelled", message="cancelled", created_at=AT))
        db.commit()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_context(timezone_id="Asia/Tokyo", locale="en-US").new_page()
        page.goto(f"{base_url}/?token=tok#/jobs")
        created = page.locator("tr[data-job] time")
        expect(created).to_have_attribute("datetime", "2026-01-02T03:04:05Z")
        expect(created).to_have_attribute("title", "Jan 2, 2026, 12:04:05 PM")
        page.goto(f"{base_url}/#/job/job_localtimes")
        expect(page.locator("li[data-kind=cancelled] time")).to_have_text("12:04:05 PM")
        browser.close()
