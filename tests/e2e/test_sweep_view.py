"""A sweep's Pareto view: its rules in node, and the page in headless Chromium against a live API (uvicorn in a
thread, SQLite, no worker: the jobs' evaluations are crafted metric rows)."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from playwright.sync_api import expect
from test_dashboard import FRONTEND, SHOTS, page  # noqa: F401  (page: the Chromium fixture)

from api.app import create_app
from api.db import Job, MetricPoint
from api.settings import Settings
from tests.live_server import serving

RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
const { sortRows, sweepGroups } = await import(`${process.argv[1]}/views/compare.js`);
const rows = [{ name: "a", gain: 0.1, drift: 0.3 }, { name: "b", gain: null, drift: null },
  { name: "c", gain: 0.5, drift: 0.1 }, { name: "d", gain: 0.3, drift: 0.2 }];
const sweep = { frontier: ["c", "a"], data: [
  { id: "a", name: "A", gain: 0.1, drift: 0.05, on_frontier: true, values: { kl_weight: 2 } },
  { id: "b", name: "B", gain: null, drift: null, on_frontier: false, values: { kl_weight: 1 } },
  { id: "c", name: "C", gain: 0.5, drift: 0.01, on_frontier: true, values: { kl_weight: 0.5 } },
  { id: "d", name: "D", gain: 0.05, drift: 0.2, on_frontier: false, values: { kl_weight: 0.1 } }] };
console.log(JSON.stringify({ gain: sortRows(rows, "gain").map((r) => r.name),
  drift: sortRows(rows, "drift").map((r) => r.name), groups: sweepGroups(sweep) }));
"""


def test_sweep_table_sorts_and_the_frontier_is_one_line():
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["gain"] == ["c", "d", "a", "b"] and seen["drift"] == ["c", "d", "a", "b"]  # no figure: last
    *singles, frontier = seen["groups"]
    assert [(g["label"], g["points"][0]["label"]) for g in singles] == [("kl_weight=0.1", "D")]  # dominated
    assert frontier["label"] == "Pareto frontier"
    assert [(p["label"], p["x"], p["y"]) for p in frontier["points"]] == [("C", 0.01, 0.5), ("A", 0.05, 0.1)]


@pytest.fixture
def live_api(tmp_path, tiny_model_dir):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_model_dir)
    app = create_app(Settings(home=tmp_path / "home", models_dir=models, demo_model=False, tokens="alice:tok-a"),
                     enqueue=lambda *_args, **_kw: None)
    with serving(app) as base:
        yield base, app


def crafted_sweep(url: str, app) -> dict:
    """A 2 x 2 sweep whose jobs have finished with crafted evaluations (base domain ppl 20)."""
    docs = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5))
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        ids = {p: client.post("/v1/datasets", data={"purpose": p}, files={"file": ("d.jsonl", docs)}).json()["id"]
               for p in ("domain", "general")}
        base = {"name": "legal", "base_model": "tiny", "domain_data": [ids["domain"]],
                "general_data": [ids["general"]], "max_steps": 10, "eval_every": 10, "seq_len": 64}
        sweep = client.post("/v1/sweeps", json={"base": base, "grid": {"ratio": ["4:1", "1:1"],
                                                                         "kl_weight": [0.5, 2]}}).json()
    finals = {("4:1", 0.5): (6.0, 0.30), ("4:1", 2.0): (9.0, 0.12), ("1:1", 0.5): (10.0, 0.25),
              ("1:1", 2.0): (14.0, 0.04)}  # 1:1 at kl_weight 0.5 is dominated by 4:1 at 2
    with app.state.services.sessions.begin() as db:
        for job in sweep["data"]:
            ppl, kl = finals[(job["values"]["ratio"], job["values"]["kl_weight"])]
            row = db.get(Job, job["id"])
            row.step, row.status = 10, "succeeded"
            db.add_all([MetricPoint(job_id=job["id"], step=0, values={"eval/domain_ppl": 20.0, "eval/general_kl": 0.0}),
                        MetricPoint(job_id=job["id"], step=10, values={"eval/domain_ppl": ppl, "eval/general_kl": kl})])
    return sweep


def test_the_sweep_view_draws_the_frontier_and_sorts_its_table(live_api, page):  # noqa: F811
    url, app = live_api
    sweep = crafted_sweep(url, app)
    page.goto(f"{url}/?token=tok-a#/jobs")
    expect(page.locator(f"a[data-sweep='{sweep['id']}']")).to_contain_text("legal (4 jobs)")
    page.click(f"a[data-sweep='{sweep['id']}']")
    table = page.locator("[data-sweep-table] tbody tr")
    expect(table).to_have_count(4)
    frontier = page.locator("figure[data-frontier]")
    expect(frontier).to_be_visible()
    shown = frontier.get_attribute("data-frontier").split(",")
    names = {j["id"]: j["name"] for j in sweep["data"]}
    assert [names[i] for i in shown] == ["legal [ratio=1:1 kl_weight=2.0]", "legal [ratio=4:1 kl_weight=2.0]",
                                         "legal [ratio=4:1 kl_weight=0.5]"]  # lowest drift first
    assert table.locator("td:first-child").all_inner_texts()[0] == "legal [ratio=4:1 kl_weight=0.5]"  # most gain
    assert page.locator("[data-frontier=no] td:first-child").all_inner_texts() == ["legal [ratio=1:1 kl_weight=0.5]"]
    page.click("th.sortable:has-text('drift')")
    expect(table.first).to_contain_text("legal [ratio=1:1 kl_weight=2.0]")  # least drift
    page.screenshot(path=SHOTS / "sweep.png", full_page=True)
