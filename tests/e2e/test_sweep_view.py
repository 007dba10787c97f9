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
from store.db import Job, MetricPoint
from store.settings import Settings
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
    assert [(g["label"], g["points"][0]["label"]) for g in singles] == [("D · kl_weight=0.1", "D")]  # dominated
    assert frontier["label"] == "Pareto frontier: C, A"
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


def crafted_sweep(url: str, app, finals: dict | None = None) -> dict:
    """A 2 x 2 sweep whose jobs have finished with crafted evaluations (base domain ppl 20), ``finals`` giving
    each grid point's (domain ppl, KL) at step 10."""
    docs = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5))
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-a"}) as client:
        ids = {p: client.post("/v1/datasets", data={"purpose": p}, files={"file": ("d.jsonl", docs)}).json()["id"]
               for p in ("domain", "general")}
        base = {"name": "legal", "base_model": "tiny", "domain_data": [ids["domain"]],
                "general_data": [ids["general"]], "max_steps": 10, "eval_every": 10, "seq_len": 64}
        sweep = client.post("/v1/sweeps", json={"base": base, "grid": {"ratio": ["4:1", "1:1"],
                                                                         "kl_weight": [0.5, 2]}}).json()
    finals = finals or {("4:1", 0.5): (6.0, 0.30), ("4:1", 2.0): (9.0, 0.12), ("1:1", 0.5): (10.0, 0.25),
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
    assert table.locator("td:nth-child(2)").all_inner_texts()[0] == "legal [ratio=4:1 kl_weight=0.5]"  # most gain
    assert page.locator("[data-frontier=no] td:nth-child(2)").all_inner_texts() == ["legal [ratio=1:1 kl_weight=0.5]"]
    page.click("th.sortable:has-text('drift')")
    expect(table.first).to_contain_text("legal [ratio=1:1 kl_weight=2.0]")  # least drift
    page.screenshot(path=SHOTS / "sweep.png", full_page=True)


CHART_RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
const { dataSpan, fittedAxis, niceTicks, placeLabels } = await import(`${process.argv[1]}/charts.js`);
const area = { l: 0, t: 0, r: 400, b: 300 };
const crowd = Array.from({ length: 12 }, (_, i) => ({ x: 200 + i, y: 150 + (i % 3), w: 30, h: 12 }));
const apart = [{ x: 50, y: 50, w: 20, h: 12 }, { x: 395, y: 150, w: 20, h: 12 }, { x: 200, y: 2, w: 20, h: 12 }];
console.log(JSON.stringify({ close: niceTicks(...dataSpan([0.571, 0.589, 0.598])), one: dataSpan([0.3]),
  axis: fittedAxis([-0.01, 0.14]),
  crowd: placeLabels(crowd, area), apart: placeLabels(apart, area) }));
"""


def overlapping(boxes: list[dict]) -> list[tuple[dict, dict]]:
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a["l"] < b["r"] and b["l"] < a["r"] and a["t"] < b["b"] and b["t"] < a["b"]]


def test_scatter_axes_fit_the_points_and_its_labels_never_overlap():
    run = subprocess.run(["node", "--input-type=module", "-e", CHART_RULES, str(FRONTEND)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert 0.55 <= seen["close"]["lo"] < 0.571 and 0.598 < seen["close"]["hi"] <= 0.62  # not pinned at 0
    assert seen["one"] == pytest.approx([0.27, 0.33])
    assert seen["axis"]["ticks"] == [0, 0.05, 0.1] and (seen["axis"]["lo"], seen["axis"]["hi"]) == (-0.01, 0.14)
    placed = [b for b in seen["crowd"] if b]
    assert 1 < len(placed) < 12 and overlapping(placed) == []  # the crowded ones that find no room are left out
    assert all(b and b["l"] >= 0 and b["r"] <= 400 and b["t"] >= 0 and b["b"] <= 300 for b in seen["apart"])
    assert seen["apart"][1]["r"] < 395 and seen["apart"][2]["t"] > 2  # left of, below a point at the edge


def test_close_sweep_points_spread_over_the_plot_with_short_labels(live_api, page):  # noqa: F811
    """Four sweep points within 0.03 of gain and 0.005 of drift: the axes fit them, each is labelled with its letter
    (the table beside names the job), and no label overlaps another, nor on Compare where the jobs share step 0."""
    url, app = live_api
    sweep = crafted_sweep(url, app, {("4:1", 0.5): (11.0, 0.140), ("4:1", 2.0): (11.1, 0.138),
                                     ("1:1", 0.5): (11.25, 0.139), ("1:1", 2.0): (11.3, 0.135)})
    page.goto(f"{url}/?token=tok-a#/compare?sweep={sweep['id']}")
    canvas = page.locator("figure[data-frontier] canvas")
    expect(canvas).to_have_attribute("data-labels-left-out", "0")
    yticks = [float(t) for t in canvas.get_attribute("data-yticks").split()]
    xticks = [float(t) for t in canvas.get_attribute("data-xticks").split()]
    assert len(yticks) >= 3 and yticks[0] >= 0.56 and yticks[-1] <= 0.61, yticks  # gains 0.571 .. 0.598, no 0
    assert len(xticks) >= 3 and xticks[0] >= 0.13 and xticks[-1] <= 0.145, xticks  # drifts 0.135 .. 0.140
    labels = json.loads(canvas.get_attribute("data-labels"))
    assert sorted(label["text"] for label in labels) == ["A", "B", "C", "D"] and overlapping(labels) == []
    keys = page.locator("[data-sweep-table] td[data-col=point]").all_inner_texts()
    assert sorted(keys) == ["A", "B", "C", "D"]  # the table says which job each letter is
    expect(page.locator("figure[data-frontier] .legend")).to_contain_text("Pareto frontier: ")
    page.locator("figure[data-frontier]").screenshot(path=SHOTS / "sweep-close-points.png")
    page.screenshot(path=SHOTS / "sweep-close-points-page.png", full_page=True)
    page.goto(f"{url}/?token=tok-a#/compare?ids={','.join(j['id'] for j in sweep['data'])}")
    canvas = page.locator('[data-chart="Domain gain against general drift"] canvas')
    expect(canvas).to_have_attribute("data-points", "8")
    labels = json.loads(canvas.get_attribute("data-labels"))
    assert overlapping(labels) == [] and sorted(label["text"] for label in labels)[0] == "0"  # step 0 once
    page.locator('[data-chart="Domain gain against general drift"]').screenshot(path=SHOTS / "compare-tradeoff.png")
