"""Weight interpolation through the service: POST queues the worker task, which stores its rows as an
`interpolation` event that GET lists; the 422s for α and the 409 for `best` before any evaluation; the owner's
cap on side tasks (429), the same request answering the pending one (200), and a refusing broker (503)."""

from datetime import timedelta
from functools import partial

import pytest
from kombu.exceptions import OperationalError
from sqlalchemy import select, update

from api.routes.interpolations import celery_sender
from store.db import SideTask, utcnow
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
    queued = response.json()
    assert queued | {"alphas": None} == {"id": queued["id"], "job_id": job_id, "checkpoint": "step-2", "alphas": None,
                                         "status": "queued"}
    assert sent == [(job_id, "step-2", [0.0, 1.0], queued["id"])]
    again = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(), json={"checkpoint": "step-2",
                                                                                   "alphas": [0, 1]})
    assert again.status_code == 200 and again.json() == queued | {"status": "done"} and len(sent) == 1  # done
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


@pytest.fixture
def held(client):
    """What POST hands to the workers, held there: no worker takes it, so each stays queued."""
    calls: list[tuple] = []
    client.app.dependency_overrides[celery_sender] = lambda: lambda *args: calls.append(args)
    yield calls
    client.app.dependency_overrides.clear()


def job_with_a_checkpoint(client, auth, upload, settings, owner: str = "alice") -> str:
    """A job of ``owner``'s (never run) whose run directory holds an (empty) checkpoint ``step-2``."""
    job_id = client.post("/v1/jobs", headers=auth(owner), json=tiny_job_spec(upload, owner)).json()["id"]
    (settings.runs_dir / job_id / "checkpoints" / "step-2").mkdir(parents=True)
    return job_id


def test_an_owner_past_the_side_task_cap_gets_a_429_naming_it_and_others_are_served(client, auth, upload,
                                                                                     settings, held):
    job_id = job_with_a_checkpoint(client, auth, upload, settings)
    url = f"/v1/jobs/{job_id}/interpolations"
    for alpha in (0.0, 0.25, 0.5, 0.75):  # MOL_SIDE_TASKS_PER_OWNER: 4 by default
        assert client.post(url, headers=auth(), json={"checkpoint": "step-2", "alphas": [alpha]}).status_code == 202
    response = client.post(url, headers=auth(), json={"checkpoint": "step-2", "alphas": [1.0]})
    assert response.status_code == 429 and "MOL_SIDE_TASKS_PER_OWNER = 4" in response.json()["detail"]
    assert len(held) == 4
    bobs = job_with_a_checkpoint(client, auth, upload, settings, owner="bob")  # another owner is not held back
    assert client.post(f"/v1/jobs/{bobs}/interpolations", headers=auth("bob"),
                       json={"checkpoint": "step-2", "alphas": [1.0]}).status_code == 202
    assert record_interpolation(settings, *held[0]) == "failed"  # a worker ends one (no model in the checkpoint)
    assert client.post(url, headers=auth(), json={"checkpoint": "step-2", "alphas": [1.0]}).status_code == 202
    assert client.post(url, headers=auth(), json={"checkpoint": "step-2", "alphas": [0.1]}).status_code == 429
    with client.app.state.services.sessions.begin() as db:  # pending past MOL_SIDE_TASK_EXPIRY_H: taken for lost
        db.execute(update(SideTask).values(created_at=utcnow() - timedelta(hours=settings.side_task_expiry_h + 1)))
    assert client.post(url, headers=auth(), json={"checkpoint": "step-2", "alphas": [0.1]}).status_code == 202


def test_the_same_request_while_one_is_pending_answers_that_one(client, auth, upload, settings, held):
    job_id = job_with_a_checkpoint(client, auth, upload, settings)
    url, body = f"/v1/jobs/{job_id}/interpolations", {"checkpoint": "step-2", "alphas": [0, 1]}
    first = client.post(url, headers=auth(), json=body)
    again = client.post(url, headers=auth(), json=body | {"alphas": [0.0, 1.0]})  # the same, spelt otherwise
    assert (first.status_code, again.status_code) == (202, 200) and again.json() == first.json()
    assert client.post(url, headers=auth(), json=body | {"alphas": [0, 0.5]}).status_code == 202  # not the same
    assert len(held) == 2
    assert record_interpolation(settings, *held[0]) == "failed"
    retry = client.post(url, headers=auth(), json=body)  # a failed one is tried again
    assert retry.status_code == 202 and retry.json()["id"] != first.json()["id"] and len(held) == 3


@pytest.mark.parametrize("refusal", [OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
                                     ConnectionRefusedError(111, "Connection refused")])
def test_a_broker_that_refuses_is_a_503_and_leaves_no_queued_interpolation(client, auth, upload, settings, held,
                                                                           refusal):
    job_id = job_with_a_checkpoint(client, auth, upload, settings)
    url, body = f"/v1/jobs/{job_id}/interpolations", {"checkpoint": "step-2", "alphas": [0, 1]}

    def broker_down(*_args) -> None:
        raise refusal

    client.app.dependency_overrides[celery_sender] = lambda: broker_down
    for _ in range(5):  # none of them counts against the cap
        response = client.post(url, headers=auth(), json=body)
        assert response.status_code == 503, response.text
        assert response.json()["detail"] == (f"the job queue is unavailable ({type(refusal).__name__}); no "
                                             "interpolation was created: send the same request again later")
    with client.app.state.services.sessions() as db:
        assert db.scalars(select(SideTask)).all() == []
    client.app.dependency_overrides[celery_sender] = lambda: lambda *args: held.append(args)
    assert client.post(url, headers=auth(), json=body).status_code == 202 and len(held) == 1


def test_the_jobs_pending_side_tasks_are_listed_until_they_end(client, auth, upload, settings, held):
    job_id = job_with_a_checkpoint(client, auth, upload, settings)
    url = f"/v1/jobs/{job_id}/side-tasks"
    assert client.get(url, headers=auth()).json() == []
    queued = client.post(f"/v1/jobs/{job_id}/interpolations", headers=auth(),
                         json={"checkpoint": "step-2", "alphas": [0, 1]}).json()
    (pending,) = client.get(url, headers=auth()).json()
    assert (pending["id"], pending["kind"], pending["status"]) == (queued["id"], "interpolation", "queued")
    assert client.get(url, headers=auth("bob")).status_code == 404  # another owner's job
    assert record_interpolation(settings, *held[0]) == "failed"  # a worker ends it (no model in the checkpoint)
    assert client.get(url, headers=auth()).json() == []
    assert client.get(f"/v1/jobs/{job_id}/interpolations", headers=auth()).json()[0]["error"]
