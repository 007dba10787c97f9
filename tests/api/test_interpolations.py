"""Weight interpolation through the service: POST queues the worker task, which stores its rows as an
`interpolation` event that GET lists; the 422s for α and the 409 for `best` before any evaluation."""

import json

import pytest

from api.routes.interpolations import celery_sender
from worker.runner import run
from worker.tasks import record_interpolation

DOCS = "".join(json.dumps({"text": f"Question: What is {i} plus 1?\nAnswer: {i + 1}"}) + "\n" for i in range(40))
PROSE = "".join(json.dumps({"text": f"The river and the stone number {i} under the quiet morning."}) + "\n"
                for i in range(40))
SQLITE = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the run is the cost, not the database


def job_spec(upload, **extra) -> dict:
    domain = upload(DOCS).json()["id"]
    general = upload(PROSE, purpose="general").json()["id"]
    return {"name": "i", "base_model": "tiny", "domain_data": [domain], "general_data": [general], "seq_len": 32,
            "batch_size": 4, "lr": 3e-3, "max_steps": 2, "eval_every": 2, "save_every": 2, "eval_batches": 1} | extra


@pytest.fixture
def sent(client, settings) -> list[tuple]:
    """What POST hands to the workers; each is run here, in-process, as the worker task would."""
    calls: list[tuple] = []

    def send(job_id: str, checkpoint: str, alphas: list[float]) -> None:
        calls.append((job_id, checkpoint, alphas))
        record_interpolation(settings, job_id, checkpoint, alphas)

    client.app.dependency_overrides[celery_sender] = lambda: send
    yield calls
    client.app.dependency_overrides.clear()


@SQLITE
def test_an_interpolation_runs_and_its_rows_are_listed(client, auth, upload, settings, sent):
    job_id = client.post("/v1/jobs", headers=auth(), json=job_spec(upload)).json()["id"]
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
    job_id = client.post("/v1/jobs", headers=auth(), json=job_spec(upload)).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(), json={"alphas": alphas})
    assert response.status_code == 422 and response.json()["detail"].startswith("alphas: "), response.text
    assert why in response.json()["detail"] and sent == []


def test_best_before_any_evaluation_is_a_409_and_a_missing_step_a_404(client, auth, upload, sent):
    job_id = client.post("/v1/jobs", headers=auth(), json=job_spec(upload)).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(), json={"checkpoint": "best"})
    assert response.status_code == 409 and "no best checkpoint yet" in response.json()["detail"]
    response = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(), json={"checkpoint": "step-4"})
    assert response.status_code == 404 and sent == []
    assert client.get(f"/v1/jobs/{job_id}/interpolations", headers=auth()).json() == []
