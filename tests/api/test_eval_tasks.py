"""eval_tasks via the API: the owner's task datasets only (422 naming the entry otherwise), a best_metric naming a
task not among them refused, and a task file whose answer is not among its choices refused at upload (422 naming
the line and the fix)."""

import json

from store.db import Dataset, Job, init_db, make_engine
from tests.api.conftest import tiny_job_spec
from worker.runner import resolve_spec

TASK = json.dumps({"question": "What is 1 plus 2?", "choices": ["3", "river"], "answer": 0}) + "\n"


def test_eval_tasks_must_be_the_owners_task_datasets(client, auth, upload, settings):
    task = upload(TASK, purpose="task").json()["id"]
    theirs = upload(TASK, purpose="task", owner="bob").json()["id"]
    spec = tiny_job_spec(upload)
    for tasks, problem in [([spec["domain_data"][0]], "eval_tasks[0]: dataset '{}' was uploaded for 'domain'"),
                           ([f"arith={task}", theirs], "eval_tasks[1]: unknown dataset '{}'")]:
        answer = client.post("/v1/jobs", headers=auth(), json=spec | {"eval_tasks": tasks})
        assert answer.status_code == 422 and problem.format(tasks[-1]) in answer.text
    answer = client.post("/v1/jobs", headers=auth(), json=spec | {"eval_tasks": [task], "best_metric": "task/x/acc"})
    assert answer.status_code == 422 and "names a task not in eval_tasks" in answer.text
    answer = client.post("/v1/jobs", headers=auth(), json=spec | {"eval_tasks": [f"arith={task}"],
                                                                   "best_metric": "task/arith/acc",
                                                                   "max_task_drop": 5})
    assert answer.status_code == 201, answer.text
    assert answer.json()["spec"]["eval_tasks"] == [f"arith={task}"]
    sessions = init_db(make_engine(settings.db_url))
    with sessions() as db:  # the worker hands the engine the stored file, the task keeping its name
        spec = resolve_spec(sessions, db.get(Job, answer.json()["id"]), settings)
        assert spec.eval_tasks == [f"arith={db.get(Dataset, task).path}"]


def test_a_task_answer_outside_its_choices_is_refused_at_upload_naming_the_line_and_the_fix(upload):
    bad = TASK + json.dumps({"question": "Which is green?", "choices": ["winter", "garden"], "answer": "grass"})
    answer = upload(bad + "\n", purpose="task")
    assert answer.status_code == 422, answer.text
    assert "line 2" in answer.text and "0-based index" in answer.text


def test_the_client_keeps_each_tasks_name_when_it_sends_ids(tmp_path):
    from mol_cli.commands.client_refs import resolve_spec

    class Client:  # an id needs no call; a local file would be uploaded (tests/api/test_client_commands.py)
        pass

    spec = resolve_spec(Client(), {"eval_tasks": ["arith=ds_abc", "ds_xyz"]}, tmp_path)
    assert spec["eval_tasks"] == ["arith=ds_abc", "ds_xyz=ds_xyz"]
