"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against `mol up`."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from test_new_job_form import leaf_paths

from mol_engine.spec import JobSpec
from mol_engine.task_names import task_entry

CHROMIUM = "/usr/bin/chromium"
FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
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
    expect(page.locator("div.empty")).to_contain_text("No jobs yet")

    page.click("text=New job")
    # the demo model starts on the demo's corpora; the inputs carry the spec's ranges
    expect(page.locator("#base_model")).to_have_value("demo")
    for purpose in ("domain", "general", "eval"):
        expect(page.locator(f"#pick-{purpose} option:checked")).to_contain_text(f"demo-{purpose}.jsonl")
    expect(page.locator("#pick-general option[value=self]")).to_have_count(1)  # general_source: self
    expect(page.locator("#f-grad_accum")).to_have_attribute("max", "1024")
    expect(page.locator("#f-kl_direction")).to_have_value("reverse")
    # the mixture's fields carry their reasoning from the spec's descriptions
    expect(page.locator('[data-help-for="kl_weight"]')).to_contain_text("λ in loss = CE(domain rows)")
    expect(page.locator('[data-help-for="kl_direction"]')).to_contain_text("mode-seeking")
    expect(page.locator('[data-group="LoRA"]')).to_be_hidden()
    page.check("input[name=finetune][value=lora]")
    expect(page.locator("#f-lora_rank")).to_have_value("16")
    expect(page.locator("#f-lora_rank")).to_have_attribute("max", "1024")
    page.check("input[name=finetune][value=full]")
    # the demo model starts on examples/demo-mol.yaml's numbers (minutes on a CPU), not JobSpec's 1,000 steps
    for field, value in {"max_steps": "400", "seq_len": "128", "batch_size": "16", "eval_every": "50"}.items():
        expect(page.locator(f"#f-{field}")).to_have_value(value)
    # every spec field has a control: the common ones up front, the others in the Advanced section, from the schema
    names = set(page.eval_on_selector_all("#new-job [name]", "nodes => nodes.map((n) => n.name)"))
    assert sorted(set(leaf_paths(JobSpec.model_json_schema())) - names) == ["general_source"]  # the self option
    expect(page.locator("[data-estimate]")).to_contain_text("no estimate yet")  # no job has run here yet
    # the modelled peak per process (POST /v1/estimates) against the live worker's memory
    expect(page.locator("[data-preflight]")).to_contain_text(re.compile(r"Memory: about [\d.]+ [MG]iB per process"))
    page.screenshot(path=SHOTS / "new-job.png", full_page=True)
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    page.set_input_files("#file-domain", str(bad))
    expect(page.locator('[data-error-for="domain_data"]')).to_contain_text("broken.jsonl, line 2: invalid JSON")
    mine = tmp_path / "domain.jsonl"  # an upload of our own, picked once stored
    mine.write_text((demo / "domain.jsonl").read_text() + '{"text": "one more document of our own"}\n')
    upload(page, "domain", mine)
    expect(page.locator("#pick-domain option:checked")).to_contain_text("domain.jsonl")
    page.fill("#f-name", "demo-mol")
    for field, value in {"seq_len": "64", "batch_size": "8", "max_steps": "20", "eval_every": "5",
                         "save_every": "10", "lr": "0.003", "kl_weight": "-1"}.items():
        page.fill(f"#f-{field}", value)
    page.select_option("#pick-general", "")  # MoL without general text, and kl_weight -1: both refused
    page.click("text=Start training")  # the field's error first, next to its field
    expect(page.locator('[data-error-for="kl_weight"]')).to_contain_text("kl_weight: Input should be greater")
    page.fill("#f-kl_weight", "1")
    page.click("text=Start training")  # then the whole-spec rule, next to the field it names, not at the bottom
    expect(page.locator('[data-error-for="general_data"]')).to_contain_text("general_data is required")
    expect(page.locator('[data-error-for="kl_weight"]')).to_be_empty()
    expect(page.locator('[data-error-for="spec"]')).to_be_empty()
    demo_general = page.locator("#pick-general option", has_text="demo-general.jsonl").get_attribute("value")
    page.select_option("#pick-general", demo_general)
    page.click("text=Start training")
    expect(page.locator("tr[data-job]")).to_have_count(2)
    page.screenshot(path=SHOTS / "jobs-list.png", full_page=True)

    page.get_by_role("link", name="demo-mol", exact=True).click()
    training = page.locator('[data-chart="Training cross-entropy"]')
    expect(training.locator(".chart-empty")).to_contain_text("after the first training step")
    expect(training.locator(".u-legend .u-series", has_text="general rows")).to_have_count(0)  # MoL: no CE there
    expect(page.locator('[data-chart^="Training KL"]')).to_have_count(1)
    points = "+document.querySelector('[data-chart=\"Training cross-entropy\"]')?.dataset.points"
    page.wait_for_function(f"() => {points} > 0", timeout=180_000)  # after loading and the step-0 evaluation
    first = int(training.get_attribute("data-points"))
    page.wait_for_function(f"() => {points} > {first}")  # the chart gains points while the job runs
    assert page.locator(".badge").first.inner_text() in ("running", "succeeded")
    page.screenshot(path=SHOTS / "job-running.png", full_page=True)

    page.goto(service.url.split("?")[0] + "#/jobs")
    expect(page.locator('.badge[data-status="succeeded"]')).to_have_count(2, timeout=900_000)  # busy 2-core box: slow
    # held-out KL to the base, which CPT records too (its training batches have none)
    cpt_row = page.locator("tr[data-job]", has_text="demo-mol-cpt")
    expect(cpt_row.locator('[data-metric="eval/general_kl"]')).to_have_text(re.compile(r"^\d"))
    cpt_row.get_by_role("link", name="demo-mol-cpt").click()
    expect(page.locator('[data-chart^="Training KL"]')).to_have_count(0)  # no blank MoL-only chart on CPT
    cpt_ce = page.locator('[data-chart="Training cross-entropy"] .u-legend .u-series', has_text="general rows")
    expect(cpt_ce).to_be_visible()
    page.go_back()
    expect(page.locator("tr[data-job]")).to_have_count(2)  # the list is drawn again before its boxes are checked
    for box in page.locator("tr[data-job] input[type=checkbox]").all():
        box.check()
    page.click("text=Compare selected (2)")
    expect(page.locator('[data-chart="KL to the base on held-out general text"]')).to_be_visible()
    legend = page.locator('[data-chart="KL to the base on held-out general text"] .u-legend .u-series')
    expect(legend).to_have_count(3)  # step + the two jobs
    expect(page.locator('[data-chart="Domain gain against general drift"] .legend span')).to_have_count(2)
    final_ppl = page.locator('table[data-summary] tr[data-metric="eval/domain_ppl"][data-row="final"] [data-delta]')
    expect(final_ppl).to_have_count(2)  # a final figure per job, side by side, with its change against the base
    for delta in final_ppl.all():
        assert re.fullmatch(r" [+−][\d.]+%", delta.inner_text()), delta.inner_text()
    base_kl = page.locator('table[data-summary] tr[data-metric="eval/general_kl"][data-row="base"] td.num')
    expect(base_kl).to_have_text([re.compile(r"^[\d.e−-]+$")] * 2)  # the base's figures: step 0's evaluation
    card = page.locator('[data-chart="Domain gain against general drift"]')
    canvas = card.locator("canvas")
    assert canvas.bounding_box()["width"] > 0.9 * card.bounding_box()["width"]  # fills its card
    ticks = (canvas.get_attribute("data-xticks") + " " + canvas.get_attribute("data-yticks")).split()
    assert all(re.fullmatch(r"-?\d+(\.\d{1,3})?", t) for t in ticks), ticks  # round ticks
    page.screenshot(path=SHOTS / "compare.png", full_page=True)

    page.get_by_role("link", name="demo-mol", exact=True).first.click()
    expect(page.locator("h1")).to_have_text("demo-mol")
    expect(page.locator('.toolbar .badge[data-status="succeeded"]')).to_be_visible()
    page.wait_for_function("() => +document.querySelector('[data-chart=\"QA exact match\"]')?.dataset.points >= 5")
    # sample generations: 2 QA questions and 2 general-text prefixes, the newest step's beside the base's
    expect(page.locator(".samples tr[data-sample]")).to_have_count(4)
    expect(page.locator("[data-steps=samples] option").first).to_have_text("0 (base)")
    # the forgetting drill-down: the passages that drifted most, the first as a heat strip over its tokens
    expect(page.locator(".drift tr[data-passage]").first).to_be_visible()
    assert page.locator(".drift [data-strip] span").count() > 1
    expect(page.locator("[data-disk]")).to_have_text(re.compile(r"[\d.]+ [KMG]iB on disk, 2 checkpoints"))
    page.screenshot(path=SHOTS / "job-finished.png", full_page=True)
    with page.expect_download() as info:
        page.locator("[data-download]").last.click()
    archive = tmp_path / "checkpoint.tar.gz"
    info.value.save_as(archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert any(n.endswith("config.json") for n in names) and any(n.endswith(".safetensors") for n in names)

    # the form's own defaults on the demo model are a job the server takes (with its CPT baseline)
    page.click("text=New job")
    expect(page.locator("#pick-general option:checked")).to_contain_text("demo-general.jsonl")
    # the shape of demo-mol and its baseline (64 tokens, 8 rows): an estimate measured on them
    page.fill("#f-seq_len", "64")
    page.fill("#f-batch_size", "8")
    expect(page.locator("[data-estimate]")).to_contain_text(re.compile(
        r"about [\d.]+ (s|min) \(measured on 1 finished job like it\); its CPT baseline: about [\d.]+ (s|min)"))
    page.fill("#f-seq_len", "128")
    page.fill("#f-batch_size", "16")
    # an Advanced field, and the YAML view edited and applied: the submitted spec holds both
    page.click("details.advanced > summary")
    page.fill("#f-weight_decay", "0.01")
    page.click("details.yaml-view > summary")
    view = page.locator("#spec-yaml")
    expect(view).to_have_value(re.compile(r"\nweight_decay: 0.01\n"))  # the form's values, as a spec file
    view.fill(view.input_value().replace("seed: 0", "seed: 7")
              .replace("sample_prompts: null", "sample_prompts:\n  - 'What is 2 plus 2?'"))
    page.click("text=Start training")  # refused while the YAML view holds edits the form does not
    expect(page.locator('[data-error-for="yaml"]')).to_contain_text("apply them, or revert them")
    page.click("[data-action=apply-yaml]")
    expect(page.locator("#f-seed")).to_have_value("7")
    expect(page.locator("#f-sample_prompts")).to_have_value("- What is 2 plus 2?")
    page.screenshot(path=SHOTS / "new-job-advanced-yaml.png", full_page=True)
    page.click("text=Start training")
    expect(page.locator("tr[data-job]")).to_have_count(4)
    jobs = {j["name"]: j for j in service.client.get("/v1/jobs").json()["data"]}
    spec = service.client.get(f"/v1/jobs/{jobs['mol-job']['id']}").json()["spec"]
    assert spec["method"] == "mol" and spec["general_data"] and jobs["mol-job-cpt"]["method"] == "cpt"
    assert (spec["weight_decay"], spec["seed"], spec["sample_prompts"]) == (0.01, 7, ["What is 2 plus 2?"])
    assert (spec["max_steps"], spec["seq_len"], spec["batch_size"]) == (400, 128, 16)  # the demo's own numbers
    service.client.post(f"/v1/jobs/{jobs['mol-job-cpt']['id']}/cancel")  # the CPT one is not needed here
    page.get_by_role("link", name="mol-job", exact=True).click()
    # its ETA, from its own pace once it has stepped
    expect(page.locator("[data-eta]")).to_have_text(re.compile(r"^about [\d.]+ (s|min|h) left$"), timeout=240_000)
    page.screenshot(path=SHOTS / "job-eta.png")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("button:has-text('Cancel')")  # cancelling asks first; dismissed, the job runs on
    expect(page.locator("button:has-text('Cancel')")).to_be_enabled()
    assert asked and "Cancel the job mol-job" in asked[0]
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Cancel')")
    expect(page.locator('.toolbar .badge[data-status="cancelled"]')).to_be_visible(timeout=240_000)


# The dashboard's rules as pure functions, run in node (no browser, no service): where a 422 line goes, which
# datasets a model starts on, what a job charts, round ticks, one point's span, and the summary's figures.
RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
const root = process.argv[1];
const { slotFor, defaultDataset, fieldRule, fieldSchema } = await import(`${root}/views/new.js`);
const schema = JSON.parse(process.argv[2]);  // the JobSpec schema, as GET /v1/jobspec serves it
const { chartsFor, taskName, seriesValue } = await import(`${root}/views/job.js`);
const { figures, tradeoffAxes, tradeoffPoints } = await import(`${root}/views/compare.js`);
const { niceTicks, axisRange, tickLabels } = await import(`${root}/charts.js`);
const slots = ["base_model", "domain_data", "general_data", "eval_data", "reference", "batch_size", "kl_weight",
  "lora.rank", "name", "max_general_kl", "on_budget", "best_metric"];
const lines = ["kl_weight: Input should be greater than or equal to 0", "lora.rank: Input should be at most 1024",
  "domain_data.0: unknown dataset 'ds_x'",
  "spec: general_data is required for method 'mol' (or set general_source: self)",
  "spec: reference 'cached' only applies to method 'mol' (method is 'cpt')", "general_source: Input should be 'corpus'",
  "spec: batch_size must be at least 2 so each step holds domain and general rows", "spec: something unnamed",
  "max_general_kl: Input should be greater than 0", "on_budget: Input should be 'warn' or 'stop'",
  "spec: max_general_kl needs held-out general text: set general_data (or general_source: self)",
  "spec: best_metric 'qa_exact_match' needs eval_data (a QA set)"];
const datasets = [{ id: "mine", purpose: "domain", filename: "mine.jsonl" },
  { id: "dd", purpose: "domain", filename: "demo-domain.jsonl" },
  { id: "dg", purpose: "general", filename: "demo-general.jsonl" },
  { id: "de", purpose: "eval", filename: "demo-eval.jsonl" }];
const titles = (spec) => chartsFor(spec).map(([o, names]) => [o.title, o.series.map((s) => s.label), names]);
const evals = [{ step: 0, "eval/domain_ppl": 100 }, { step: 5, "eval/domain_ppl": 40 },
  { step: 10, "eval/domain_ppl": 50 }];
console.log(JSON.stringify({
  slots: lines.map((l) => slotFor(l, slots)),
  demo: ["domain", "general", "eval"].map((p) => defaultDataset(p, datasets, "demo")),
  other: ["domain", "general", "eval"].map((p) => defaultDataset(p, datasets, "other")),
  mol: titles({ method: "mol", eval_data: "ds_e" }), cpt: titles({ method: "cpt", eval_data: null }),
  ticks: niceTicks(-0.0719, 4.71), one_step: axisRange(0, 0, { integer: true }), one_value: axisRange(5, 5),
  labels: tickLabels([6.8801, 6.8802, 6.8803]), figures: figures(evals, { name: "eval/domain_ppl", lower: true }),
  budget: ["max_general_kl", "on_budget", "best_metric"].map((f) => fieldRule(fieldSchema(schema, f))),
  task_names: ["arith=ds_1", "/x/qa.v1.jsonl", "ds_2", "/x/_odd name.jsonl"].map(taskName),
  tasks: titles({ method: "mol", eval_tasks: ["arith=ds_1", "ds_2"] }).at(-1),
  task_value: seriesValue({ "task/a/exact_match": 0.5 }, ["task/a/acc", "task/a/exact_match"]),
  task_axes: (() => {
    const job = [{ step: 0, "eval/domain_ppl": 10, "eval/general_kl": 0, "task/a/acc": 0.8 },
      { step: 5, "eval/domain_ppl": 5, "eval/general_kl": 0.2, "task/a/acc": 0.6 }];
    const axes = tradeoffAxes([job]);
    return { x: axes.x.map((a) => a.label), y: axes.y.map((a) => a.title),
      points: tradeoffPoints(job, axes.x[1], axes.y[0]).map((p) => [Math.round(p.x), +p.y.toFixed(3), p.label]) };
  })(),
  auto: chartsFor({ method: "mol", kl_weight: "auto", target_general_kl: 0.05 }).map(([o, names]) =>
    [o.title, o.limit?.value ?? null, names]),
  weight: fieldRule(fieldSchema(schema, "kl_weight")),
}));
"""


def test_form_chart_and_summary_rules():
    schema = json.dumps(JobSpec.model_json_schema())
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND), schema], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["slots"] == ["kl_weight", "lora.rank", "domain_data", "general_data", "reference", "general_data",
                             "batch_size", None,  # None: above the submit button
                             "max_general_kl", "on_budget", "max_general_kl", "best_metric"]
    assert seen["demo"] == ["dd", "dg", "de"] and seen["other"] == ["mine", "self", ""]
    mol, cpt = ({t[0]: t for t in seen[m]} for m in ("mol", "cpt"))
    assert mol["Training cross-entropy"][1] == ["domain rows"] and "Training KL to the base (general rows)" in mol
    assert cpt["Training cross-entropy"][2] == ["train/domain_ce", "train/general_ce"]
    assert not any(t.startswith("Training KL") for t in cpt) and "QA exact match" in mol and "QA exact match" not in cpt
    assert seen["ticks"]["ticks"] == [-1, 0, 1, 2, 3, 4, 5] and seen["ticks"]["decimals"] == 0
    assert seen["one_step"] == [0, 1] and seen["one_value"] == [4.5, 5.5]
    assert seen["labels"] == ["6.8801", "6.8802", "6.8803"]
    assert seen["figures"] == {"base": {"step": 0, "value": 100}, "final": {"step": 10, "value": 50},
                               "best": {"step": 5, "value": 40}}
    # the forgetting budget's inputs: an optional number above 0 (empty: none) and two choices, each described
    kl, on_budget, best = seen["budget"]
    assert (kl["min"], kl.get("max"), kl["number"], kl["nullable"], kl["hint"]) == (0, None, True, True, "above 0")
    assert kl.get("fallback") is None and kl["help"].startswith("forgetting budget: the KL to the base")
    assert (on_budget["choices"], on_budget["fallback"], on_budget["nullable"]) == (["warn", "stop"], "warn", False)
    assert (best["choices"], best["fallback"]) == (["domain_ppl", "qa_exact_match"], "domain_ppl")
    assert "needs eval_data" in best["help"]
    # eval_tasks: a chart of their scores, named as the engine names them (mol_engine/spec.py task_entry)
    entries = ["arith=ds_1", "/x/qa.v1.jsonl", "ds_2", "/x/_odd name.jsonl"]
    assert seen["task_names"] == [task_entry(e)[0] for e in entries] == ["arith", "qa", "ds_2", "t_odd_name"]
    assert seen["tasks"] == ["Task scores (eval_tasks; step 0: the base)", ["arith", "ds_2"],
                             [["task/arith/acc", "task/arith/exact_match"], ["task/ds_2/acc", "task/ds_2/exact_match"]]]
    assert seen["task_value"] == 0.5
    assert seen["task_axes"] == {
        "x": ["general drift: KL to the base (nats / token)", "task/a/acc: points below the base"],
        "y": ["Domain gain", "task/a/acc gain"], "points": [[0, 0.0, 0], [20, 0.693, 5]]}
    # the KL set-point (kl_weight: auto): λ's own chart, the target on the KL charts; a text input taking a number
    auto = {title: (target, names) for title, target, names in seen["auto"]}
    assert auto["KL weight λ (set-point controller)"] == (None, ["train/kl_weight"])
    assert auto["Training KL to the base (general rows)"][0] == 0.05
    assert "KL weight λ (set-point controller)" not in mol
    weight = seen["weight"]
    assert (weight["number"], weight["numeric"], weight["words"]) == (False, True, ["auto"])
    assert weight["hint"] == "from 0 to 1,000, or auto"
