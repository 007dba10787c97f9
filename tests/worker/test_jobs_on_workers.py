import json

import pytest

from mol_engine.callbacks import JsonlLogger
from mol_engine.spec import JobSpec
from mol_engine.train import train


def status(api, job_id):
    return api.get(f"/v1/jobs/{job_id}").json()


def test_job_runs_to_success_with_metrics_in_the_database(api, workers, submit, wait_for):
    workers.start()
    job_id = submit()
    job = wait_for(lambda: (j := status(api, job_id))["status"] in ("succeeded", "failed") and j, what="job end")
    assert job["status"] == "succeeded", job["error"]
    assert job["step"] == 6 and job["progress"] == 1.0 and "eval/general_kl" in job["last_metrics"]
    steps = [p["step"] for p in api.get(f"/v1/jobs/{job_id}/metrics").json() if "train/loss" in p]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [c["name"] for c in api.get(f"/v1/jobs/{job_id}/checkpoints").json()] == [
        "step-2", "step-4", "step-6"]
    usage = job["usage"]  # metered by the runner in its worker's child process (store/usage.py)
    assert usage["tokens"] == job["last_metrics"]["train/tokens"] > 0 and usage["accelerator_seconds"] > 0
    assert usage["storage_bytes"] > 0
    health = api.get("/healthz").json()
    assert health["broker"] == "ok" and len(health["workers"]) == 1
    # the worker's lines and its runner's, for this job alone (the worker's last line follows the job's end)
    log = wait_for(lambda: (g := api.get(f"/v1/jobs/{job_id}/log").json())["text"].endswith(
        "the runner ended: succeeded (exit code 0)\n") and g, timeout=10, what="the worker's last line")
    assert log["ended"] and log["next_offset"] == log["size"] and " starts the job's runner\n" in log["text"]
    assert "[eval 6]" in log["text"] and "[checkpoint]" in log["text"] and "x.jsonl" in log["text"]
    worker = api.get("/v1/workers").json()["data"]
    assert [(w["alive"], w["busy"], w["device"].startswith(("cpu (", "cuda"))) for w in worker] == [(True, False, True)]


def test_cancel_stops_a_running_job_and_keeps_checkpoints(api, workers, submit, wait_for):
    workers.start()
    job_id = submit(max_steps=5000, save_every=2)
    wait_for(lambda: status(api, job_id)["step"] >= 3, what="job to reach step 3")
    worker = api.get("/v1/workers").json()["data"][0]
    assert worker["busy"] and worker["job_id"] == job_id and worker["job_name"] == "w"
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "running"
    job = wait_for(lambda: (j := status(api, job_id))["status"] != "running" and j, timeout=15, what="cancel")
    assert job["status"] == "cancelled" and job["step"] < 5000
    assert api.get(f"/v1/jobs/{job_id}/checkpoints").json()  # kept


def test_sse_delivers_every_point_once_across_a_reconnect(api, workers, submit, wait_for):
    workers.start()
    job_id = submit(max_steps=12)
    received, last_id = [], None
    with api.stream("GET", f"/v1/jobs/{job_id}/metrics", headers={"Accept": "text/event-stream"}) as stream:
        for line in stream.iter_lines():
            if line.startswith("id:"):
                last_id = line[3:].strip()
            if line.startswith("data:"):
                received.append(json.loads(line[5:]))
                if len(received) == 5:
                    break
    headers = {"Accept": "text/event-stream", "Last-Event-ID": last_id}
    with api.stream("GET", f"/v1/jobs/{job_id}/metrics", headers=headers) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                point = json.loads(line[5:])
                if "status" in point:
                    break
                received.append(point)
    seqs = [p["seq"] for p in received]
    assert seqs == sorted(set(seqs))
    assert seqs == [p["seq"] for p in api.get(f"/v1/jobs/{job_id}/metrics").json()]
    assert status(api, job_id)["status"] == "succeeded"


def test_a_paused_job_frees_its_worker_and_resumes_into_the_uninterrupted_curve(api, workers, submit, wait_for,
                                                                                   tiny_model_dir, corpora, tmp_path):
    workers.start()
    fields = {"max_steps": 30, "eval_every": 30, "save_every": 30}  # no checkpoint but the pause's before the end
    job_id = submit(**fields)
    wait_for(lambda: status(api, job_id)["step"] >= 1, every=0.05, what="the job's first step")
    assert api.post(f"/v1/jobs/{job_id}/pause").json()["status"] in ("running", "paused")
    job = wait_for(lambda: (j := status(api, job_id))["status"] != "running" and j, timeout=60, what="the pause")
    at = job["step"]
    assert job["status"] == "paused" and 1 <= at < 30, job
    assert [c["name"] for c in api.get(f"/v1/jobs/{job_id}/checkpoints").json()] == [f"step-{at}"]
    wait_for(lambda: not api.get("/v1/workers").json()["data"][0]["busy"], timeout=30, what="its worker free")
    assert api.post(f"/v1/jobs/{job_id}/resume").json()["status"] == "queued"
    wait_for(lambda: status(api, job_id)["status"] == "succeeded", what="the resumed job")
    resumed = [(p["step"], p["train/loss"]) for p in api.get(f"/v1/jobs/{job_id}/metrics").json()
               if "train/loss" in p]
    # the same spec uninterrupted, here (the engine alone: the service adds nothing to the numbers)
    purposes = {d["id"]: d["purpose"] for d in api.get("/v1/datasets").json()}
    spec = JobSpec.model_validate(api.get(f"/v1/jobs/{job_id}").json()["spec"]).resolve_paths(
        lambda ref: str(tiny_model_dir) if ref == "tiny" else str(corpora[purposes[ref]]))
    whole = JsonlLogger(tmp_path / "whole")
    train(spec, tmp_path / "whole", [whole])
    uninterrupted = [json.loads(line) for line in whole.metrics_path.read_text().splitlines()]
    assert [s for s, _ in resumed] == list(range(1, 31))  # no step missing or counted twice
    assert [loss for _, loss in resumed] == pytest.approx(
        [p["train/loss"] for p in uninterrupted if "train/loss" in p], rel=1e-4, abs=1e-6)
    kinds = [e["kind"] for e in api.get(f"/v1/jobs/{job_id}/events").json()]
    assert kinds.count("paused") == 1 and kinds.index("paused") < kinds.index("resumed")
