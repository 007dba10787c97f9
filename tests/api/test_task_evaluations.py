"""Task evaluation through the service: a `task` dataset checked at upload (a 422 naming the line), POST queues the
worker task, which scores the job's models with lm-eval and stores a row per model as a `task-evaluation` event
that GET lists; another owner's job or dataset is a 404, a model that cannot be loaded a 422."""

import json
from functools import partial

import pytest
import redis
from sqlalchemy import select

from api.routes.evaluations import celery_sender
from mol_engine.task_eval import evaluate_task
from store.db import SideTask
from tests.api.conftest import tiny_job_spec, worker_task_in_process
from worker.runner import run
from worker.tasks import record_task_evaluation

TASK = [{"question": "What is 1 plus 2?", "choices": ["3", "4", "river"], "answer": 0},
        {"question": "What is 3 plus 4?", "choices": ["7", "stone"], "answer": "7"},
        {"question": "Which is green?", "choices": ["garden", "winter"], "answer": 1}]
SQLITE = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the scoring is the cost, not the database


def lines(records: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


@pytest.fixture
def sent(client, settings):
    """What POST hands to the workers; each is run here, in-process, as the worker task would."""
    with worker_task_in_process(client, celery_sender, partial(record_task_evaluation, settings)) as calls:
        yield calls


def test_a_task_file_is_checked_at_upload_and_previewed(client, auth, upload):
    bad = upload(lines([TASK[0], {"question": "q", "choices": ["a", "b"], "answer": 3}, "{oops"]), purpose="task",
                 filename="quiz.jsonl")
    assert bad.status_code == 422 and bad.json()["detail"].splitlines() == [
        "quiz.jsonl, line 2: answer 3 is outside the choices (a 0-based index below 2); fix: give the right "
        "choice's 0-based index (0 to 1) or its exact text",
        "quiz.jsonl, line 3: invalid JSON (Expecting property name enclosed in double quotes)"]
    good = upload(lines(TASK), purpose="task", filename="quiz.jsonl")
    assert good.status_code == 201 and good.json()["documents"] == 3
    preview = client.get(f"/v1/datasets/{good.json()['id']}/preview", headers=auth()).json()
    assert preview["documents"][1]["text"] == "What is 3 plus 4?\n\n* 7\n- stone"


@SQLITE
def test_the_base_is_scored_as_the_engine_scores_it_and_listed(client, auth, upload, settings, sent, tiny_model_dir,
                                                                tmp_path):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    task = upload(lines(TASK), purpose="task", filename="quiz.jsonl").json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/evaluations", headers=auth(), json={"task": task,
                                                                                    "checkpoints": ["base"]})
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued == {"id": queued["id"], "job_id": job_id, "task": task, "checkpoints": ["base"], "status": "queued"}
    (listed,) = client.get(f"/v1/jobs/{job_id}/evaluations", headers=auth()).json()
    assert (listed["filename"], listed["kind"], listed["error"]) == ("quiz.jsonl", "multiple_choice", None)
    (tmp_path / "quiz.jsonl").write_text(lines(TASK))
    direct = evaluate_task(tiny_model_dir, tmp_path / "quiz.jsonl", device="cpu")
    assert listed["rows"] == [{"checkpoint": "base"} | direct] and direct["n"] == 3
    assert client.get(f"/v1/jobs/{job_id}/evaluations", headers=auth("bob")).status_code == 404


@SQLITE
def test_by_default_every_checkpoint_and_the_base_are_scored(client, auth, upload, settings, sent):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    assert run(job_id, settings) == "succeeded"
    task = upload(lines([{"question": "What is 1 plus 2?", "answer": "3"}]), purpose="task").json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/evaluations", headers=auth(), json={"task": task})
    assert response.status_code == 202 and response.json()["checkpoints"] == ["base", "step-2"], response.text
    (listed,) = client.get(f"/v1/jobs/{job_id}/evaluations", headers=auth()).json()
    assert listed["kind"] == "exact_match" and [r["checkpoint"] for r in listed["rows"]] == ["base", "step-2"]
    assert all(r["n"] == 1 and r["exact_match"] in (0.0, 1.0) for r in listed["rows"])


def test_another_owners_job_or_dataset_is_a_404_and_bad_requests_are_4xx(client, auth, upload, settings, sent):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    task = upload(lines(TASK), purpose="task").json()["id"]
    bobs = upload(lines(TASK), purpose="task", owner="bob").json()["id"]
    qa = upload(lines([{"question": "q", "answer": "a"}]), purpose="eval").json()["id"]
    url = f"/v1/jobs/{job_id}/evaluations"
    cases = [(auth("bob"), {"task": bobs}, 404, f"job '{job_id}' not found"),
             (auth(), {"task": bobs}, 404, f"dataset '{bobs}' not found"),
             (auth(), {"task": qa}, 422, f"task: dataset '{qa}' was uploaded for 'eval', not 'task'"),
             (auth(), {"task": task, "checkpoints": ["step-4"]}, 404, "checkpoint 'step-4' not found"),
             (auth(), {"task": task, "checkpoints": ["best"]}, 409, "no best checkpoint yet"),
             (auth(), {"task": task, "checkpoints": ["last"]}, 422, "checkpoints")]
    for headers, body, status, message in cases:
        response = client.post(url, headers=headers, json=body)
        assert response.status_code == status and message in response.json()["detail"], response.text
    (settings.models_dir / "tiny").unlink()  # the base moved away after the job was made
    response = client.post(url, headers=auth(), json={"task": task, "checkpoints": ["base"]})
    assert response.status_code == 422 and "base model 'tiny' cannot be loaded" in response.json()["detail"]
    assert sent == []


def test_a_task_gone_before_the_worker_reads_it_is_a_failed_evaluation(client, auth, upload, settings):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    task = upload(lines(TASK), purpose="task", filename="quiz.jsonl").json()["id"]
    assert client.delete(f"/v1/datasets/{task}", headers=auth()).status_code == 204
    assert record_task_evaluation(settings, job_id, task, ["base"]) == "failed"
    (listed,) = client.get(f"/v1/jobs/{job_id}/evaluations", headers=auth()).json()
    assert listed["rows"] is None and "deleted" in listed["error"]


@pytest.fixture
def held(client):
    """What POST hands to the workers, held there: no worker takes it, so each stays queued."""
    calls: list[tuple] = []
    client.app.dependency_overrides[celery_sender] = lambda: lambda *args: calls.append(args)
    yield calls
    client.app.dependency_overrides.clear()


def test_evaluations_share_the_side_task_cap_and_the_same_request_answers_the_pending_one(client, auth, upload,
                                                                                         settings, held):
    settings.side_tasks_per_owner = 2
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    tasks = [upload(lines(TASK[:n]), purpose="task").json()["id"] for n in (1, 2, 3)]
    url = f"/v1/jobs/{job_id}/evaluations"
    first = client.post(url, headers=auth(), json={"task": tasks[0], "checkpoints": ["base"]})
    again = client.post(url, headers=auth(), json={"task": tasks[0], "checkpoints": ["base", "base"]})
    assert (first.status_code, again.status_code) == (202, 200) and again.json() == first.json()
    assert client.post(url, headers=auth(), json={"task": tasks[1], "checkpoints": ["base"]}).status_code == 202
    response = client.post(url, headers=auth(), json={"task": tasks[2], "checkpoints": ["base"]})
    assert response.status_code == 429 and "MOL_SIDE_TASKS_PER_OWNER = 2" in response.json()["detail"]
    assert [args[1] for args in held] == tasks[:2]


def test_a_broker_that_refuses_is_a_503_and_leaves_no_queued_evaluation(client, auth, upload, settings):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    task = upload(lines(TASK), purpose="task").json()["id"]

    def broker_down(*_args) -> None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    client.app.dependency_overrides[celery_sender] = lambda: broker_down
    response = client.post(f"/v1/jobs/{job_id}/evaluations", headers=auth(), json={"task": task,
                                                                                   "checkpoints": ["base"]})
    assert response.status_code == 503 and response.json()["detail"] == (
        "the job queue is unavailable (ConnectionError); no task evaluation was created: send the same request "
        "again later")
    client.app.dependency_overrides.clear()
    with client.app.state.services.sessions() as db:
        assert db.scalars(select(SideTask)).all() == []
