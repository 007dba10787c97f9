"""Weight interpolation through the service: POST queues the worker task, which stores its rows as an
`interpolation` event that GET lists; the 422s for α and the 409 for `best` before any evaluation."""

from functools import partial

import pytest

from api.routes.interpolations import celery_sender
from tests.api.conftest import tiny_job_spec, worker_task_in_process
from worker.runner import run
from worker.tasks import record_interpolation

SQLITE = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the run is the cost, not the database


@pytest.fixture
def sent(client, settings):
    """What POST hands to the workers; each is run here, in-process, as the worker task would."""
    with worker_task_in_process(client, celery_sender, partial(record_interpolation, settings)) as calls:
        yield calls


@SQLITE
def test_an_interpolation_runs_and_its_rows_are_listed(client, auth, upload, settings, sent):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    assert run(job_id, settings) == "succeeded"
    response = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(),
                           json={"checkpoint": "best", "alphas": [0, 1]})
    assert response.status_code == 202, response.text
    assert response.json() | {"alphas": None} == {"job_id": job_id, "checkpoint": "step-2", "alphas": None,
                                                  "status": "queued"}
    assert sent == [(job_id, "step-2", [0.0, 1.0])]
    (listed,) = client.get(f"/v1/jobs/{job_id}/interpolations", headers=auth()).json()
    assert (listed["checkpoint"], listed["step"], listed["error"]) == ("step-2", 2, None)
    base, ckpt = listed["rows"]
    assert (base["alpha"], base["general_kl"], ckpt["alpha"]) == (0.0, 0.0, 1.0) and ckpt["general_kl"] > 0
    metrics = client.get(f"/v1/jobs/{job_id}/metrics", headers=auth()).json()
    final = {k.removeprefix("eval/"): v for p in metrics if p["step"] == 2 for k, v in p.items()
             if k.startswith("eval/")}
    assert final and all(ckpt[k] == pytest.approx(v, rel=1e-9) for k, v in final.items())
    assert client.get(f"/v1/jobs/{job_id}/interpolations", headers=auth("bob")).status_code == 404


@pytest.mark.parametrize(("alphas", "why"), [([0, 1.5], "1.5 is not"), ([-0.1], "-0.1 is not"),
                                             ([0.1] * 12, "at most 11"), ([], "at least 1")])
def test_alpha_outside_0_1_or_too_many_is_a_422_naming_the_field(client, auth, upload, sent, alphas, why):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(), json={"alphas": alphas})
    assert response.status_code == 422 and response.json()["detail"].startswith("alphas: "), response.text
    assert why in response.json()["detail"] and sent == []


def test_best_before_any_evaluation_is_a_409_and_a_missing_step_a_404(client, auth, upload, sent):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(), json={"checkpoint": "best"})
    assert response.status_code == 409 and "no best checkpoint yet" in response.json()["detail"]
    response = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(), json={"checkpoint": "step-4"})
    assert response.status_code == 404 and sent == []
    assert client.get(f"/v1/jobs/{job_id}/interpolations", headers=auth()).json() == []
