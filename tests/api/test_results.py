"""Metrics, events, checkpoints and downloads of a job that really ran (the worker's runner, in-process)."""

import errno
import io
import json
import re
import tarfile

import pytest
from transformers import AutoModelForCausalLM

from api.app import create_app
from mol_engine import checkpoint
from worker.runner import run

DOCS = "".join(json.dumps({"text": f"Question: What is {i} plus 1?\nAnswer: {i + 1}"}) + "\n" for i in range(40))
PROSE = "".join(json.dumps({"text": f"The river and the stone number {i} under the quiet morning."}) + "\n"
                for i in range(40))


@pytest.fixture
def finished_job(client, auth, upload, settings):
    def make(expect: str = "succeeded", **extra) -> str:
        domain = upload(DOCS).json()["id"]
        general = upload(PROSE, purpose="general").json()["id"]
        spec = {"name": "r", "base_model": "tiny", "domain_data": [domain], "general_data": [general],
                "seq_len": 32, "batch_size": 4, "lr": 3e-3, "max_steps": 4, "eval_every": 2, "save_every": 2,
                "eval_batches": 1} | extra
        job_id = client.post("/v1/jobs", headers=auth(), json=spec).json()["id"]
        assert run(job_id, settings) == expect
        return job_id

    return make


def test_metrics_and_events_with_after(client, auth, finished_job):
    job_id = finished_job()
    points = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth()).json()
    assert [p["step"] for p in points if "train/loss" in p] == [1, 2, 3, 4]
    assert [p["step"] for p in points if "eval/domain_ppl" in p] == [0, 2, 4]
    later = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth(), params={"after": points[2]["seq"]}).json()
    assert later == points[3:]
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth()).json()
    kinds = [e["kind"] for e in events]
    assert kinds.index("token-store") < kinds.index("config") and kinds[-1] == "succeeded"  # data, then config
    built = [e["message"] for e in events if e["kind"] == "token-store"]
    assert len(built) == 2 and all(" documents of data.jsonl, " in m for m in built), built  # the owner's name
    assert client.get(f"/v1/jobs/{job_id}/events", headers=auth(), params={"after": events[-1]["seq"]}).json() == []
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["finished_at"]


def test_sse_sends_backlog_then_ends_and_resumes_from_last_event_id(client, auth, finished_job):
    job_id = finished_job()
    with client.stream("GET", f"/v1/jobs/{job_id}/metrics", headers=auth() | {"Accept": "text/event-stream"}) as s:
        lines = list(s.iter_lines())
    ids = [line[3:].strip() for line in lines if line.startswith("id:")]
    data = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert data[-1] == {"status": "succeeded"} and len(data) - 1 == len(
        client.get(f"/v1/jobs/{job_id}/metrics", headers=auth()).json())
    resume_at = ids[3]
    headers = auth() | {"Accept": "text/event-stream", "Last-Event-ID": resume_at}
    with client.stream("GET", f"/v1/jobs/{job_id}/metrics", headers=headers) as s:
        rest = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert rest == data[4:]


def test_checkpoint_download_is_a_loadable_hf_directory(client, auth, finished_job, tmp_path):
    job_id = finished_job()
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth()).json()
    assert [(c["name"], c["kind"]) for c in listed] == [("step-2", "full"), ("step-4", "full")]
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/step-4/download", headers=auth())
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / f"{job_id}-step-4")
    assert model.config.model_type == "llama"
    refused = client.get(f"/v1/jobs/{job_id}/checkpoints/step-4/download", headers=auth(), params={"format": "adapter"})
    assert refused.status_code == 422 and "only available for LoRA" in refused.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}/checkpoints/step-9/download", headers=auth()).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/checkpoints/..%2F..%2Fx/download", headers=auth()).status_code == 404


def test_lora_job_downloads_as_adapter_or_merged(client, auth, finished_job, tmp_path):
    job_id = finished_job(finetune="lora", lora={"rank": 4}, max_steps=2)
    for fmt in ("adapter", "merged"):
        response = client.get(f"/v1/jobs/{job_id}/checkpoints/step-2/download", headers=auth(), params={"format": fmt})
        assert response.status_code == 200, response.text
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            names = tar.getnames()
        assert any(n.endswith("adapter_config.json") for n in names) == (fmt == "adapter")


def test_job_reports_the_disk_its_run_directory_takes(client, auth, finished_job, settings):
    job_id = finished_job(save_every=1, keep_checkpoints=2)
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth()).json()
    assert [c["name"] for c in listed] == ["step-3", "step-4"]  # older ones pruned as newer ones completed
    files = [f for f in (settings.runs_dir / job_id).rglob("*") if f.is_file()]
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["disk_bytes"] == sum(f.stat().st_size for f in files) > sum(c["bytes"] for c in listed) > 0
    listed_jobs = client.get("/v1/jobs", headers=auth()).json()["data"]
    assert [j["id"] for j in listed_jobs] == [job_id] and "disk_bytes" not in listed_jobs[0]  # the list never walks


def test_full_disk_fails_the_job_with_a_message_and_keeps_earlier_checkpoints(client, auth, finished_job,
                                                                              monkeypatch):
    real, calls = checkpoint.save_file, []

    def fills_up(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # two files per checkpoint: step-2 fits, step-4 does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fills_up)
    job_id = finished_job(expect="failed")
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "failed" and "Traceback" not in job["error"]
    assert re.fullmatch(r"CheckpointError: disk full while writing checkpoint step-4 under \S+/checkpoints: "
                        r"free space [\d.]+ \w+ \(checkpoints kept: step-2\)", job["error"]), job["error"]
    assert [c["name"] for c in client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth()).json()] == ["step-2"]
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth()).json()
    assert events[-1]["kind"] == "failed" and events[-1]["message"] == job["error"]


def test_restarting_the_api_loses_nothing(client, auth, finished_job, settings, queued):
    job_id = finished_job()
    before = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth()).json()
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings, enqueue=queued.append)) as again:
        assert again.get(f"/v1/jobs/{job_id}", headers=auth()).json()["status"] == "succeeded"
        assert again.get(f"/v1/jobs/{job_id}/metrics", headers=auth()).json() == before
        assert len(again.get("/v1/datasets", headers=auth()).json()) == 2


def test_health_reports_database_broker_and_workers(client, auth):
    report = client.get("/healthz", headers=auth()).json()
    assert report["database"] == "ok" and report["broker"] == "ok" and report["workers"] == []


def test_a_corpus_broken_on_disk_fails_the_job_naming_field_file_and_line(client, auth, upload, settings):
    domain = upload(DOCS).json()
    general = upload(PROSE, purpose="general").json()["id"]
    stored = next(p for p in settings.datasets_dir.iterdir() if p.is_file() and p.stat().st_size == len(DOCS))
    with stored.open("a") as handle:  # damaged after its upload was checked (a bad disk, a hand edit)
        handle.write('{"text": "unterminated\n')
    spec = {"name": "broken", "base_model": "tiny", "domain_data": [domain["id"]], "general_data": [general],
            "seq_len": 32, "batch_size": 4, "max_steps": 2}
    job_id = client.post("/v1/jobs", headers=auth(), json=spec).json()["id"]
    assert run(job_id, settings) == "failed"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["error"] == (f"DataError: domain_data[0]: data.jsonl ({domain['id']}), line 41: invalid JSON "
                            "(Invalid control character at)")
    assert job["step"] == 0 and client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth()).json() == []


def strict_json(text: str):
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))


def test_a_diverging_job_fails_with_a_clear_reason_and_its_curves_stay_json(client, auth, finished_job, settings,
                                                                            monkeypatch):
    from tests.engine.test_train_stops import poison_step

    poison_step(monkeypatch, at_step=3)
    job_id = finished_job("failed")
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["error"].startswith("TrainError: non-finite loss at step 3: train/general_kl = nan"), job["error"]
    assert "step-2 is kept" in job["error"] and job["step"] == 2
    assert [c["name"] for c in client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth()).json()] == ["step-2"]


def test_non_finite_metrics_are_stored_and_streamed_as_null(client, auth, finished_job, settings):
    from store.db import Job
    from store.jobs import acquire_lease, finish
    from worker.runner import DatabaseRecorder

    job_id = finished_job()
    sessions = client.app.state.services.sessions
    with sessions.begin() as db:  # run it again, as a runner "test" would
        db.get(Job, job_id).status = "queued"
    assert acquire_lease(sessions, job_id, "test", lease_timeout_s=60)
    recorder = DatabaseRecorder(sessions, job_id, "test", heartbeat_s=60)
    recorder.on_metrics(5, {"eval/general_kl": float("nan"), "eval/domain_ppl": float("inf"), "train/lr": 0.1})
    recorder.on_event({"step": 5, "kind": "eval", "message": "m", "eta_s": float("-inf")})
    recorder.close()
    assert finish(sessions, job_id, "succeeded", "test")
    response = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth())
    assert response.status_code == 200
    assert strict_json(response.text)[-1] | {"seq": 0} == {"seq": 0, "step": 5, "eval/general_kl": None,
                                                           "eval/domain_ppl": None, "train/lr": 0.1}
    assert strict_json(client.get(f"/v1/jobs/{job_id}/events", headers=auth()).text)[-1]["data"] == {"eta_s": None}
    assert client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["last_metrics"]["eval/general_kl"] is None
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth() | {"Accept": "text/event-stream"}) as s:
        data = [strict_json(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert {"step": 5, "eval/general_kl": None, "eval/domain_ppl": None, "train/lr": 0.1} in [
        {k: v for k, v in d.items() if k != "seq"} for d in data]
    events = [d for d in data if d.get("kind") == "eval"]
    assert all(e["created_at"].endswith("Z") for e in events)
    assert {"step": 5, "kind": "eval", "message": "m", "data": {"eta_s": None}} in [  # as the dashboard reads it
        {k: v for k, v in d.items() if k not in ("seq", "created_at")} for d in events]


def test_nan_written_by_an_earlier_version_reads_back_as_null(client, auth, finished_job, settings):
    from sqlalchemy import exc, text

    job_id = finished_job()
    old_row = text("UPDATE metric_points SET \"values\" = '{\"train/loss\": NaN}' WHERE job_id = :j")
    if settings.db_url.startswith("postgresql"):  # its json type refuses NaN: no earlier version stored one there
        with pytest.raises(exc.DataError), client.app.state.services.sessions.begin() as db:
            db.execute(old_row, {"j": job_id})
        return
    with client.app.state.services.sessions.begin() as db:
        db.execute(old_row, {"j": job_id})
    points = strict_json(client.get(f"/v1/jobs/{job_id}/metrics", headers=auth()).text)
    assert points and all(p["train/loss"] is None for p in points)


def test_a_cancel_while_the_base_samples_general_text_ends_the_job_before_step_1(client, auth, upload, settings,
                                                                                 monkeypatch):
    from worker.runner import DatabaseRecorder

    record = DatabaseRecorder.on_event

    def on_event(self, event):  # the user presses cancel on seeing the sampling progress
        record(self, event)
        if event["kind"] == "self-sample":
            client.post(f"/v1/jobs/{self.job_id}/cancel", headers=auth())

    monkeypatch.setattr(DatabaseRecorder, "on_event", on_event)
    spec = {"name": "s", "base_model": "tiny", "domain_data": [upload(DOCS).json()["id"]], "general_source": "self",
            "self_sample_tokens": 1_000_000, "seq_len": 32, "batch_size": 4, "max_steps": 4}
    job_id = client.post("/v1/jobs", headers=auth(), json=spec).json()["id"]
    assert run(job_id, settings) == "cancelled"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert (job["status"], job["step"], job["error"]) == ("cancelled", 0, None)
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth()).json()
    assert events[0]["kind"] == "self-sample" and events[0]["data"]["tokens"] > 0
    assert events[-1]["kind"] == "cancelled" and "while sampling general text" in events[-1]["message"]
    assert client.get(f"/v1/jobs/{job_id}/metrics", headers=auth()).json() == []  # not even the step-0 evaluation
