"""The New job form's rules, run in node (no browser, no service): a control for every spec field, the YAML view's
round trip with the loader `mol train` uses, the demo's preset, the time estimate's words and the job page's ETA.
The form itself (its controls in the page, a submit through the Advanced section and the YAML view) is checked in
Chromium by test_dashboard.py and in Firefox by test_dashboard_firefox.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from api.estimate import CADENCE, SHAPE
from mol_engine.spec import JobSpec
from mol_engine.spec_file import load_spec_dict, load_yaml

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
globalThis.CSS = { escape: (s) => s };
const root = process.argv[1];
const f = await import(`${root}/views/spec_fields.js`);
const { etaSeconds, trackPace } = await import(`${root}/views/job.js`);
const schema = JSON.parse(process.argv[2]);
const spec = JSON.parse(process.argv[3]);
const at = (s) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
const problem = (text) => { try { f.parseSpecYaml(text, schema); return null; } catch (e) { return e.message; } };
const prop = (path) => path.startsWith("lora.") ? schema.$defs.LoraSpec.properties[path.slice(5)]
  : schema.properties[path];
// a run: config at 0 s; evaluations of 2 s at steps 0 and 10 (ending at 2 s and 14 s), a 1 s save at step 10
let pace = null;
for (const ev of [{ kind: "token-store", step: 0, created_at: at(0) }, { kind: "config", step: 0, created_at: at(0) },
  { kind: "eval", step: 0, created_at: at(2), data: { seconds: 2 } },
  { kind: "eval", step: 10, created_at: at(14), data: { seconds: 2 } },
  { kind: "checkpoint", step: 10, created_at: at(15), data: { seconds: 1 } }]) pace = trackPace(pace, ev);
const job = { step: 20, max_steps: 100, spec: { eval_every: 10, save_every: 50 } };
const yaml = f.specYaml(spec, schema);
console.log(JSON.stringify({
  paths: f.specPaths(schema), kinds: Object.fromEntries(f.specPaths(schema).map((p) => [p, f.controlKind(prop(p))])),
  yaml, back: f.parseSpecYaml(yaml, schema),
  problems: [problem("seed: 1\\nfoo: 2"), problem("lora: {rank: 8, rnak: 2}"), problem("seed: [1,"), problem("- 1")],
  prompts: f.yamlValue(["What is 2 plus 2?", "a: b"]),
  demo: f.DEMO_SPEC, estimate_fields: f.ESTIMATE_FIELDS,
  query: f.estimateQuery({ base_model: "demo", seq_len: 64, gradient_checkpointing: false, name: "x", lr: 0.1 }),
  none: f.estimateText({ seconds: null, based_on: 0 }),
  both: f.estimateText({ seconds: 200, based_on: 2 }, { seconds: 30, based_on: 1 }),
  preflight: f.preflightText({ worker: "gpu-1:1", device: "H100", device_memory_bytes: 80 * 2 ** 30, fits: false,
    peak_bytes: 90 * 2 ** 30, step_s: 0.5, job_s: 600, workers: [{ fits: false }, { fits: true }] }),
  preflight_cpu: f.preflightText({ worker: null, device: "cpu", device_memory_bytes: null, fits: null,
    peak_bytes: 300 * 2 ** 20, step_s: 1.25, job_s: 30, workers: [] }),
  preflight_parts: f.preflightParts({ message: "m", phase: "forward", rate_source: "assumed: x",
    parts: { parameters: 2 ** 20, reference: 0, activations: 3 * 2 ** 20 } }),
  pace, eta: etaSeconds(job, pace, Date.parse(at(45))),
  before: etaSeconds({ ...job, step: 0 }, pace, Date.parse(at(3))),
}));
"""


def leaf_paths(schema: dict) -> list[str]:
    """Every field of a spec as a dotted path, in the schema's order (a nested model's fields one by one)."""
    def walk(props: dict, prefix: str) -> list[str]:
        out = []
        for name, prop in props.items():
            ref = prop.get("$ref", "").split("/")[-1]
            inner = schema["$defs"][ref]["properties"] if ref else None
            out += walk(inner, f"{prefix}{name}.") if inner else [f"{prefix}{name}"]
        return out
    return walk(schema["properties"], "")


@pytest.fixture(scope="module")
def seen() -> dict:
    spec = {"name": "mine", "base_model": "demo", "domain_data": ["ds_a"], "general_data": ["ds_b"], "ratio": "4:1",
            "lr": 2e-5, "lora": {"rank": 8, "target_modules": ["q_proj", "v_proj"]}, "max_grad_norm": None,
            "qa_prompt": "Q: {question}\nA:", "sample_prompts": ["What is 2 plus 2?", "yes", "1:30", "a: b"],
            "report_to": ["tensorboard"], "gradient_checkpointing": True, "seed": 7, "device": "cuda:0"}
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND),
                          json.dumps(JobSpec.model_json_schema()), json.dumps(spec)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout) | {"spec": spec}


def test_every_spec_field_gets_a_control_of_its_type(seen):
    schema = JobSpec.model_json_schema()
    assert seen["paths"] == leaf_paths(schema)  # all of them, nested ones by their dotted path
    kinds = seen["kinds"]
    assert {kinds[p] for p in ("seed", "weight_decay", "lora.dropout", "keep_checkpoints")} == {"number"}
    assert {kinds[p] for p in ("schedule", "precision", "packing", "distributed")} == {"choice"}
    assert (kinds["gradient_checkpointing"], kinds["report_to"], kinds["qa_prompt"]) == ("flag", "choices", "multiline")
    assert kinds["sample_prompts"] == kinds["lora.target_modules"] == "yaml"  # a list or a string: typed as YAML


def test_the_yaml_view_is_a_spec_file_mol_train_reads_back_the_same(seen, tmp_path):
    spec = seen["spec"]
    assert load_yaml(seen["yaml"]) == spec  # `mol train`'s loader: '4:1' stays a string, 2e-05 a float
    assert seen["back"] == spec  # and the form reads its own YAML back unchanged
    assert list(seen["back"]) == [name for name in JobSpec.model_fields if name in spec]  # in the spec's order
    (tmp_path / "spec.yaml").write_text(seen["yaml"])
    assert JobSpec.model_validate(load_spec_dict(tmp_path / "spec.yaml")).lora.target_modules == ["q_proj", "v_proj"]
    assert seen["problems"][0] == "foo: unknown field" and seen["problems"][1] == "lora.rnak: unknown field"
    assert seen["problems"][2].startswith("yaml: not valid YAML") and "mapping" in seen["problems"][3]
    assert load_yaml(seen["prompts"]) == ["What is 2 plus 2?", "a: b"]  # one field's YAML


def test_the_demo_starts_on_the_demo_example_and_estimates_ask_for_the_shape(seen):
    example = load_yaml((EXAMPLES / "demo-mol.yaml").read_text())
    assert seen["demo"] == {name: example[name] for name in seen["demo"]}  # the same numbers as the example
    assert seen["demo"]["max_steps"] == 400 and seen["demo"]["seq_len"] == 128  # ~2 min on 2 CPU cores
    assert seen["estimate_fields"] == list(SHAPE + CADENCE)  # what GET /v1/estimate takes
    assert seen["query"] == "base_model=demo&seq_len=64&gradient_checkpointing=false"
    assert seen["none"] == "Run time once a worker takes it: no estimate yet (nothing like it has finished here)."
    assert seen["both"] == ("Run time once a worker takes it: about 3 min (measured on 2 finished jobs like it); its "
                            "CPT baseline: about 30 s (measured on 1 finished job like it).")
    # POST /v1/estimates' answer: the modelled peak against the worker's memory, and its parts largest first
    assert seen["preflight"] == ("Memory: about 90.0 GiB per process on worker gpu-1:1 (H100) of its 80.0 GiB: does "
                                 "not fit; modelled time 0.50 s per step, about 10 min for the job (setup aside). It "
                                 "fits 1 of 2 live workers.")
    assert seen["preflight_cpu"] == ("Memory: about 300 MiB per process on cpu; modelled time 1.3 s per step, about "
                                     "30 s for the job (setup aside).")
    assert seen["preflight_parts"] == "m\nat the end of the forward pass\nactivations: 3 MiB\nparameters: 1 MiB\n" \
        "rate: assumed: x"


def test_the_eta_is_the_runs_own_pace_with_its_evaluations_and_saves_to_come(seen):
    pace = seen["pace"]
    assert (pace["step"], pace["spent"], pace["evals"], pace["saves"]) == (0, 5, [2, 2], [1])
    # 20 steps in 45 s less 5 s of evaluations and saves: 2 s a step; 80 steps, 8 evaluations and 2 saves to go
    assert seen["eta"] == pytest.approx(80 * 2 + 8 * 2 + 2 * 1)
    assert seen["before"] is None  # no step yet: no pace
