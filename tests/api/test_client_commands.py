"""`mol client`'s resource commands (mol_cli/commands/client_resources.py) against one live uvicorn server: a test
per command group, each checked against what the API then holds, in text and with --json; a spec naming its datasets
by local path, file name and `demo` (each file sent once: by sha256). Side tasks run in-process as the worker would
run them.
"""

import hashlib
import json
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml

from api.app import create_app
from api.client import EXISTING_HEADER, MolClient
from api.dataset_store import EXISTING_HEADER as SERVERS_HEADER
from api.routes import evaluations, interpolations
from mol_cli.main import main
from store.settings import Settings
from tests.api.test_client_cli import DOCS, PROSE
from tests.api.test_completions import TEMPLATE, variant
from tests.live_server import serving
from worker.runner import run
from worker.tasks import record_interpolation, record_task_evaluation

TOKEN = "tok-alice"
TASK = "".join(json.dumps(r) + "\n" for r in [{"question": "What is 1 plus 2?", "choices": ["3", "4"], "answer": 0},
                                               {"question": "Which is green?", "choices": ["winter", "garden"],
                                                "answer": 1}])
SPEC = {"name": "cli", "base_model": "tiny", "seq_len": 32, "batch_size": 4, "lr": 3e-3, "max_steps": 2,
        "eval_every": 2, "save_every": 2, "eval_batches": 1, "sample_max_tokens": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """(base URL, settings) of a real server whose jobs run only when a test runs them and whose side tasks
    (interpolations, evaluations) run in-process at once; MOL_API_URL and MOL_TOKEN point the client at it."""
    root = tmp_path_factory.mktemp("client-commands")
    models = root / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_model_dir)
    variant(tiny_model_dir, models / "chatty", tokenizer={"chat_template": TEMPLATE})
    settings = Settings(home=root / "home", models_dir=models, demo_model=False, tokens="alice:tok-alice",
                        stream_poll_s=0.05)
    app = create_app(settings, enqueue=lambda _job_id: None)
    app.dependency_overrides[interpolations.celery_sender] = lambda: partial(record_interpolation, settings)
    app.dependency_overrides[evaluations.celery_sender] = lambda: partial(record_task_evaluation, settings)
    with serving(app, grace_s=1) as base, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOL_API_URL", base)
        patch.setenv("MOL_TOKEN", TOKEN)
        yield base, settings


@pytest.fixture
def api(served):
    with httpx.Client(base_url=served[0], headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield http


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    """A folder with docs.jsonl (domain), prose.jsonl (general) and quiz.jsonl (a task)."""
    folder = tmp_path_factory.mktemp("corpora")
    (folder / "docs.jsonl").write_text(DOCS)
    (folder / "prose.jsonl").write_text(PROSE)
    (folder / "quiz.jsonl").write_text(TASK)
    return folder


def mol(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["client", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys, *argv: str):
    code, out, err = mol(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def finished(served, corpora, tmp_path_factory) -> str:
    """The id of a job submitted by path and run to success (the module's one training run)."""
    spec = tmp_path_factory.mktemp("spec") / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC | {"domain_data": [str(corpora / "docs.jsonl")],
                                           "general_data": [str(corpora / "prose.jsonl")]}))
    assert main(["client", "submit", str(spec)]) == 0
    with MolClient(served[0], TOKEN) as client:
        job_id = client.list_jobs(1)[0]["id"]
    assert run(job_id, served[1]) == "succeeded"
    return job_id


def test_a_spec_names_datasets_by_path_file_name_or_demo_and_each_file_is_sent_once(served, api, capsys, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    notes, talk = DOCS.replace("plus", "add"), PROSE.replace("river", "brook")
    (folder / "demo-domain.jsonl").write_text(DOCS.replace("plus", "and"))  # as `mol up` lists the demo's corpus
    code, demo_id, err = mol(capsys, "upload", str(folder / "demo-domain.jsonl"), "--purpose", "domain")
    assert code == 0 and "100%" in err
    (tmp_path / "talk.jsonl").write_text(talk)
    (folder / "spec.yaml").write_text(yaml.safe_dump(SPEC | {"domain_data": ["notes.jsonl", "demo"],
                                                             "general_data": [str(tmp_path / "talk.jsonl")]}))
    (folder / "notes.jsonl").write_text(notes)  # a path relative to the spec's folder
    code, job_id, err = mol(capsys, "submit", str(folder / "spec.yaml"))
    assert code == 0 and "upload notes.jsonl" in err and "upload talk.jsonl" in err, err
    spec = api.get(f"/v1/jobs/{job_id.strip()}").json()["spec"]
    stored = {d["id"]: d for d in api.get("/v1/datasets").json()}
    assert [stored[i]["filename"] for i in spec["domain_data"]] == ["notes.jsonl", "demo-domain.jsonl"]
    assert spec["domain_data"][1] == demo_id.strip() and stored[spec["general_data"][0]]["purpose"] == "general"
    assert stored[spec["domain_data"][0]]["sha256"] == hashlib.sha256(notes.encode()).hexdigest()
    code, again, err = mol(capsys, "submit", str(folder / "spec.yaml"))  # the same files: nothing is sent
    assert code == 0 and "upload" not in err and err.count("not sent") == 2
    assert api.get(f"/v1/jobs/{again.strip()}").json()["spec"]["domain_data"] == spec["domain_data"]
    assert len(api.get("/v1/datasets").json()) == len(stored)
    (folder / "notes.jsonl").unlink()  # now a file name: the dataset of that name
    (folder / "named.yaml").write_text(yaml.safe_dump(SPEC | {"domain_data": ["notes.jsonl"], "general_data":
                                                              ["talk.jsonl"], "eval_data": "demo"}))
    code, _, err = mol(capsys, "submit", str(folder / "named.yaml"))
    assert code == 2 and err.startswith("error: eval_data: 'demo' names the demo's eval corpus")
    (folder / "named.yaml").write_text(yaml.safe_dump(SPEC | {"domain_data": ["notes.jsonl", "nope.jsonl"]}))
    code, _, err = mol(capsys, "submit", str(folder / "named.yaml"))
    assert code == 2 and "domain_data[1]: 'nope.jsonl' is neither a dataset id, a file here" in err
    (folder / "named.yaml").write_text(yaml.safe_dump(SPEC | {"domain_data": ["notes.jsonl"],
                                                              "general_data": ["talk.jsonl"]}))
    job = as_json(capsys, "submit", str(folder / "named.yaml"))
    assert job["spec"]["domain_data"] == spec["domain_data"][:1] and job["spec"]["general_data"] == spec["general_data"]


def test_an_upload_the_server_had_stored_answers_its_dataset(served, corpora, capsys):
    assert EXISTING_HEADER == SERVERS_HEADER
    with MolClient(served[0], TOKEN) as client:
        first = client.upload(corpora / "quiz.jsonl", "task")
        again = client.upload(corpora / "quiz.jsonl", "task")  # sent anyway: the server keeps no second copy
        assert again["id"] == first["id"] and client.existing == first["id"]
    code, out, err = mol(capsys, "upload", str(corpora / "quiz.jsonl"), "--purpose", "task")
    assert code == 0 and out.strip() == first["id"] and "not sent" in err and "upload quiz" not in err


def test_datasets_list_get_preview_and_delete(served, api, corpora, capsys, tmp_path):
    (tmp_path / "gone.jsonl").write_text(PROSE.replace("river", "lake"))
    dataset = as_json(capsys, "upload", str(tmp_path / "gone.jsonl"), "--purpose", "general")
    code, listing, _ = mol(capsys, "datasets", "list")
    header, first = listing.splitlines()[:2]
    assert code == 0 and header.split()[:3] == ["ID", "PURPOSE", "FILENAME"]
    assert first.split()[:4] == [dataset["id"], "general", "gone.jsonl", "40"]
    assert as_json(capsys, "datasets", "list") == api.get("/v1/datasets").json()
    code, out, _ = mol(capsys, "datasets", "get", dataset["id"])
    assert code == 0 and f"sha256 {dataset['sha256']}" in out
    assert as_json(capsys, "datasets", "get", dataset["id"]) == api.get(f"/v1/datasets/{dataset['id']}").json()
    code, out, _ = mol(capsys, "datasets", "preview", dataset["id"], "-n", "2")
    assert code == 0 and out.count("--- document") == 2 and "The lake and the stone number 1 under" in out
    assert len(as_json(capsys, "datasets", "preview", dataset["id"], "-n", "3")["documents"]) == 3
    code, out, _ = mol(capsys, "datasets", "delete", dataset["id"])
    assert code == 0 and out.strip() == f"deleted {dataset['id']}"
    assert api.get(f"/v1/datasets/{dataset['id']}").status_code == 404
    code, _, err = mol(capsys, "datasets", "preview", dataset["id"])
    assert code == 1 and f"dataset '{dataset['id']}' not found (HTTP 404)" in err


def test_models_list_and_get_on_a_server_and_in_openais_list_shape(served, finished, capsys):
    code, out, _ = mol(capsys, "models", "list")
    assert code == 0 and out.splitlines()[0].split() == ["ID", "KIND", "TYPE"]
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == ["chatty", "tiny"]
    listed = as_json(capsys, "models", "list", "--checkpoints")
    assert f"{finished}:step-2" in [m["id"] for m in listed if m["kind"] == "checkpoint"]
    assert as_json(capsys, "models", "get", "tiny")["id"] == "tiny"
    code, out, _ = mol(capsys, "models", "get", f"{finished}:step-2")
    assert code == 0 and out.splitlines()[1].split()[:2] == [f"{finished}:step-2", "checkpoint"]
    code, _, err = mol(capsys, "models", "get", "nope")
    assert code == 1 and "model 'nope' not found" in err
    openai_shape = {"object": "list", "data": [{"id": "tiny", "object": "model", "model_type": "llama"}]}
    client = MolClient("http://mol.test", "t", transport=httpx.MockTransport(lambda _r: httpx.Response(
        200, json=openai_shape)))
    assert client.models() == openai_shape["data"]  # GET /v1/models as OpenAI lists models: the same list


def test_usage_of_a_job_run_by_the_runner(served, api, finished, capsys):
    """The runner metered its real run: tokens of its steps, accelerator time, its run directory."""
    job = api.get(f"/v1/jobs/{finished}").json()["usage"]
    assert job["tokens"] > 0 and job["accelerator_seconds"] > 0 and job["storage_bytes"] > 0
    usage = as_json(capsys, "usage")
    assert usage == api.get("/v1/usage").json() and usage["tokens"] >= job["tokens"]
    assert usage["storage"]["runs_bytes"] >= job["storage_bytes"]
    code, out, _ = mol(capsys, "usage", "--from", usage["to_day"])
    assert code == 0 and out.splitlines()[0].split()[:2] == ["DAY", "(UTC)"] and "accelerator-hours" in out


def test_checkpoints_interpolations_and_evaluations_of_a_job(served, api, finished, corpora, capsys):
    code, out, _ = mol(capsys, "checkpoints", "list", finished)
    assert code == 0 and out.splitlines()[1].split() == ["step-2", "2", "full", out.split()[8], "best"]
    assert as_json(capsys, "checkpoints", "list", finished) == api.get(f"/v1/jobs/{finished}/checkpoints").json()
    code, out, _ = mol(capsys, "interpolations", "list", finished)
    assert code == 0 and out.startswith("none yet")
    queued = as_json(capsys, "interpolations", "create", finished, "--alphas", "0,1")
    assert (queued["checkpoint"], queued["alphas"], queued["status"]) == ("step-2", [0.0, 1.0], "queued")
    code, out, _ = mol(capsys, "interpolations", "list", finished)  # the worker (here: in-process) has run it
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("step-2 with the base") and lines[1].split()[0] == "ALPHA"
    assert [line.split()[0] for line in lines[2:]] == ["0", "1"] and "GENERAL_KL" in lines[1]
    code, out, _ = mol(capsys, "evaluations", "create", finished, str(corpora / "quiz.jsonl"), "--checkpoints",
                       "base,best")
    assert code == 0 and out.split()[1] == "queued"
    (listed,) = as_json(capsys, "evaluations", "list", finished)
    assert listed["filename"] == "quiz.jsonl" and [r["checkpoint"] for r in listed["rows"]] == ["base", "step-2"]
    code, out, _ = mol(capsys, "evaluations", "list", finished)
    assert code == 0 and out.startswith("quiz.jsonl (") and "CHECKPOINT" in out.splitlines()[1]
    code, _, err = mol(capsys, "interpolations", "create", finished, "--alphas", "0,2")
    assert code == 1 and "alphas: " in err and "(HTTP 422)" in err


def test_sweeps_create_list_and_get(served, api, corpora, capsys, tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(SPEC | {"domain_data": [str(corpora / "docs.jsonl")],
                                                               "general_data": [str(corpora / "prose.jsonl")]}))
    code, out, _ = mol(capsys, "sweeps", "create", str(tmp_path / "base.yaml"), "--grid", "ratio=4:1,1:1",
                       "--grid", "kl_weight=0.5,1", "--name", "grid")
    sweep_id = out.splitlines()[0]
    assert code == 0 and out.splitlines()[1].split() == ["ID", "STATUS", "RATIO", "KL_WEIGHT", "GAIN", "DRIFT",
                                                         "FRONTIER"]
    stored = api.get(f"/v1/sweeps/{sweep_id}").json()
    assert stored["grid"] == {"ratio": ["4:1", "1:1"], "kl_weight": [0.5, 1]} and stored["jobs"] == 4
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": yaml.safe_load((tmp_path / "base.yaml").read_text()),
                                                         "grid": {"lr": [1e-3, 3e-3]}}))
    second = as_json(capsys, "sweeps", "create", str(tmp_path / "sweep.yaml"))
    assert second["jobs"] == 2 and second["name"] == "cli"
    code, out, _ = mol(capsys, "sweeps", "list")
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    assert code == 0 and rows == [[second["id"], "cli", "2"], [sweep_id, "grid", "4"]]
    assert as_json(capsys, "sweeps", "get", sweep_id)["data"] == stored["data"]
    code, _, err = mol(capsys, "sweeps", "create", str(tmp_path / "base.yaml"), "--grid", "ratio")
    assert code == 2 and "--grid 'ratio': expected FIELD=V1,V2" in err


def test_webhooks_create_list_deliveries_and_delete(served, api, capsys):
    code, out, err = mol(capsys, "webhooks", "create", "https://ci.example.com/hooks/mol", "--events",
                         "job.succeeded,job.failed")
    assert code == 0, err
    hook_id, secret = out.splitlines()
    assert code == 0 and secret.startswith("secret: whsec_") and "never shown again" in err
    (listed,) = api.get("/v1/webhooks").json()
    assert listed["id"] == hook_id and listed["events"] == ["job.succeeded", "job.failed"]
    code, out, _ = mol(capsys, "webhooks", "list")
    assert code == 0 and out.splitlines()[1].split()[:3] == [hook_id, "https://ci.example.com/hooks/mol",
                                                             "job.succeeded,job.failed"]
    assert as_json(capsys, "webhooks", "deliveries", hook_id) == []
    code, out, _ = mol(capsys, "webhooks", "deliveries", hook_id)
    assert code == 0 and out.split() == ["ID", "EVENT", "JOB", "STATUS", "ATTEMPTS", "LAST", "CREATED"]
    code, out, _ = mol(capsys, "webhooks", "delete", hook_id)
    assert code == 0 and out.strip() == f"deleted {hook_id}" and api.get("/v1/webhooks").json() == []
    code, _, err = mol(capsys, "webhooks", "create", "http://127.0.0.1:9/hook")
    assert code == 1 and "(HTTP 422)" in err


def test_complete_and_chat_whole_and_streamed(served, api, capsys):
    body = {"model": "tiny", "prompt": "Question: What is 2 plus 1?", "max_tokens": 6, "temperature": 0}
    expected = api.post("/v1/completions", json=body).json()["choices"][0]["text"]
    code, out, _ = mol(capsys, "complete", "tiny", body["prompt"], "--max-tokens", "6")
    assert code == 0 and out == expected + "\n"
    code, out, _ = mol(capsys, "complete", "tiny", body["prompt"], "--max-tokens", "6", "--stream")
    assert code == 0 and out == expected + "\n"
    code, out, _ = mol(capsys, "complete", "tiny", body["prompt"], "--max-tokens", "6", "--stream", "--json")
    chunks = [json.loads(line) for line in out.splitlines()]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == expected
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    reply = api.post("/v1/chat/completions", json={"model": "chatty", "messages": messages, "max_tokens": 5,
                                                   "temperature": 0}).json()["choices"][0]["message"]["content"]
    answer = as_json(capsys, "chat", "chatty", "Hello", "--system", "Be brief.", "--max-tokens", "5")
    assert answer["choices"][0]["message"]["content"] == reply
    code, out, _ = mol(capsys, "chat", "chatty", "Hello", "--system", "Be brief.", "--max-tokens", "5", "--stream")
    assert code == 0 and out == reply + "\n"
    code, _, err = mol(capsys, "chat", "tiny", "Hello")  # no chat template: the server's 422, exit 1
    assert code == 1 and "(HTTP 422)" in err and "Traceback" not in err
