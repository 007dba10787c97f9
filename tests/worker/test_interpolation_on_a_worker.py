"""Side tasks on a real Celery worker over Redis: another owner's interpolations queued before a training job do not
hold it back (they have a queue of their own, taken in turn with the jobs'), and POST
/v1/jobs/{id}/interpolations reaches the worker, which stores the rows."""

from datetime import datetime

import pytest
import redis

from tests.worker.conftest import TOKEN

OTHER = {"Authorization": "Bearer tok-worker-tests-other"}


@pytest.fixture
def service_env(service_env):
    return service_env | {"MOL_TOKENS": f"tester:{TOKEN},other:{OTHER['Authorization'].split()[1]}"}


def queue_side_tasks_of_another_owner(api, corpora, broker_url: str, count: int) -> str:
    """The id of another owner's job (cancelled, never run) with ``count`` interpolations of a made-up checkpoint
    queued: each fails fast on a worker (no model in it), as an ``interpolation`` event with its error."""
    ids = {}
    for purpose in ("domain", "general"):
        with open(corpora[purpose], "rb") as handle:
            ids[purpose] = api.post("/v1/datasets", headers=OTHER, data={"purpose": purpose},
                                    files={"file": ("x.jsonl", handle)}).json()["id"]
    spec = {"name": "o", "base_model": "tiny", "domain_data": [ids["domain"]], "general_data": [ids["general"]],
            "seq_len": 64}
    job_id = api.post("/v1/jobs", headers=OTHER, json=spec).json()["id"]
    assert api.post(f"/v1/jobs/{job_id}/cancel", headers=OTHER).json()["status"] == "cancelled"
    redis.Redis.from_url(broker_url).delete("mol-jobs")  # its message: nothing to run
    (api.app.state.services.settings.runs_dir / job_id / "checkpoints" / "step-2").mkdir(parents=True)
    for n in range(count):
        response = api.post(f"/v1/jobs/{job_id}/interpolations", headers=OTHER,
                            json={"checkpoint": "step-2", "alphas": [n / count]})
        assert response.status_code == 202, response.text
    return job_id


def test_side_tasks_queued_first_hold_a_job_back_for_one_at_most_and_an_interpolation_runs(api, workers, submit,
                                                                                            wait_for, corpora,
                                                                                            service_env):
    others = queue_side_tasks_of_another_owner(api, corpora, service_env["MOL_BROKER_URL"], count=4)
    job_id = submit(max_steps=2, eval_every=2, save_every=2, eval_data=None)  # queued after the 4 side tasks
    workers.start()
    job = wait_for(lambda: (j := api.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
                   what="job end")
    assert job["status"] == "succeeded", job["error"]
    ended = wait_for(lambda: len(found := api.get(f"/v1/jobs/{others}/interpolations", headers=OTHER).json()) == 4
                     and found, timeout=60, what="the other owner's side tasks to end")
    before = [e for e in ended if datetime.fromisoformat(e["created_at"]) < datetime.fromisoformat(job["started_at"])]
    assert len(before) <= 1, f"{len(before)} of 4 side tasks ran before the training job"  # one queue (FIFO): 4

    response = api.post(f"/v1/jobs/{job_id}/interpolations", json={"checkpoint": "step-2", "alphas": [0, 0.5]})
    assert response.status_code == 202, response.text
    (done,) = wait_for(lambda: api.get(f"/v1/jobs/{job_id}/interpolations").json(), timeout=60,
                       what="interpolation rows")
    assert done["error"] is None and [r["alpha"] for r in done["rows"]] == [0.0, 0.5]
    assert done["rows"][0]["general_kl"] == 0.0 < done["rows"][1]["general_kl"]
    kinds = [e["kind"] for e in api.get(f"/v1/jobs/{job_id}/events").json()]
    assert kinds[-1] == "interpolation"
