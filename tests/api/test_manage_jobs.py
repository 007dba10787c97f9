"""Managing work: deleting a job (rows and run directory), filtering the jobs list while paging, previewing a
dataset, and an upload of a file already stored returning the existing dataset."""

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from store.db import Dataset, Job, JobEvent, MetricPoint, utcnow


def add_job(client, name: str = "job", status: str = "succeeded", method: str = "mol", owner: str = "alice",
            age_s: int = 0) -> str:
    """A job straight in the database, with a metric point, an event and a checkpoint file in its run dir."""
    services = client.app.state.services
    job = Job(owner=owner, name=name, status=status, spec={"base_model": "tiny", "method": method}, max_steps=5,
              created_at=utcnow() - timedelta(seconds=age_s))
    with services.sessions.begin() as db:
        db.add(job)
        db.flush()
        db.add(MetricPoint(job_id=job.id, step=1, values={"train/loss": 1.0}))
        db.add(JobEvent(job_id=job.id, step=1, kind="log", message="hi", data={}))
    checkpoint = services.settings.runs_dir / job.id / "checkpoints" / "step-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    return job.id


def rows_of(client, job_id: str) -> int:
    with client.app.state.services.sessions() as db:
        return sum(db.scalar(select(func.count()).select_from(table).where(table.job_id == job_id))
                   for table in (MetricPoint, JobEvent)) + (db.get(Job, job_id) is not None)


def test_delete_removes_the_jobs_rows_and_run_directory(client, auth):
    job_id, kept = add_job(client), add_job(client, name="other")
    run_dir = client.app.state.services.settings.runs_dir / job_id
    assert rows_of(client, job_id) == 3 and run_dir.is_dir()
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 204
    assert rows_of(client, job_id) == 0 and not run_dir.exists()
    assert client.get(f"/v1/jobs/{job_id}", headers=auth()).status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 404
    assert rows_of(client, kept) == 3  # the other job is untouched


@pytest.mark.parametrize("status", ["running", "queued"])
def test_an_active_job_is_not_deleted_until_cancelled(client, auth, status):
    job_id = add_job(client, status=status)
    response = client.delete(f"/v1/jobs/{job_id}", headers=auth())
    assert response.status_code == 409 and "cancel it first" in response.json()["detail"]
    assert rows_of(client, job_id) == 3  # nothing deleted, not even the metric points
    assert (client.app.state.services.settings.runs_dir / job_id).is_dir()


def test_another_owners_job_is_not_found(client, auth):
    job_id = add_job(client, owner="bob")
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth("alice")).status_code == 404
    assert rows_of(client, job_id) == 3


def names(page: dict) -> list[str]:
    return [job["name"] for job in page["data"]]


def test_filters_apply_together_and_paging_keeps_them(client, auth):
    for i in range(5):  # newest first: mol-4 ... mol-0
        add_job(client, name=f"Sweep mol-{i}", method="mol", status="succeeded", age_s=100 - i)
    add_job(client, name="sweep cpt", method="cpt", status="succeeded", age_s=50)
    add_job(client, name="broken mol", method="mol", status="failed", age_s=40)
    add_job(client, name="sweep mol bob", method="mol", owner="bob")

    def page(**params):
        response = client.get("/v1/jobs", headers=auth(), params=params)
        assert response.status_code == 200, response.text
        return response.json()

    assert names(page(method="cpt")) == ["sweep cpt"]
    assert names(page(status="failed")) == ["broken mol"]
    assert names(page(q="SWEEP", method="mol")) == [f"Sweep mol-{i}" for i in range(4, -1, -1)]
    first = page(q="sweep", method="mol", status="succeeded", limit=3)
    second = page(q="sweep", method="mol", status="succeeded", limit=3, after=first["last_id"])
    assert names(first) + names(second) == [f"Sweep mol-{i}" for i in range(4, -1, -1)]
    assert first["has_more"] is True and second["has_more"] is False
    assert names(page(q="100%_")) == []  # LIKE's wildcards are matched literally


@pytest.mark.parametrize("params", [{"status": "done"}, {"method": "sft"}, {"q": ""}])
def test_an_unknown_filter_value_is_a_422_naming_it(client, auth, params):
    response = client.get("/v1/jobs", headers=auth(), params=params)
    assert response.status_code == 422 and response.json()["detail"].startswith(f"query.{next(iter(params))}")


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_preview_shows_the_first_documents_cut_to_a_few_kb_with_the_stats(client, auth, upload):
    long = "word " * 2000  # 10,000 characters
    dataset = upload(jsonl({"text": long}, *({"text": f"doc {i}"} for i in range(9)))).json()
    response = client.get(f"/v1/datasets/{dataset['id']}/preview", headers=auth(), params={"n": 3})
    assert response.status_code == 200, response.text
    preview = response.json()
    assert [d["text"] for d in preview["documents"][1:]] == ["doc 0", "doc 1"]
    first = preview["documents"][0]
    assert first["chars"] == len(long.strip()) and 1000 < len(first["text"]) < first["chars"]
    assert preview["dataset"]["documents"] == 10 and preview["dataset"]["bytes"] == dataset["bytes"]
    assert preview["dataset"]["token_stores"] == []
    assert len(client.get(f"/v1/datasets/{dataset['id']}/preview", headers=auth()).json()["documents"]) == 5


def test_preview_of_an_eval_set_shows_question_and_answer_and_is_the_owners_only(client, auth, upload):
    dataset = upload(jsonl({"question": "2+2?", "answer": "4"}), purpose="eval").json()
    preview = client.get(f"/v1/datasets/{dataset['id']}/preview", headers=auth()).json()
    assert [d["text"] for d in preview["documents"]] == ["2+2?\n\n4"]
    assert client.get(f"/v1/datasets/{dataset['id']}/preview", headers=auth("bob")).status_code == 404
    too_many = client.get(f"/v1/datasets/{dataset['id']}/preview", headers=auth(), params={"n": 51})
    assert too_many.status_code == 422


def test_preview_of_a_file_gone_since_is_a_409_naming_the_clients_file(client, auth, upload):
    dataset = upload(jsonl({"text": "soon gone"}), filename="mine.jsonl").json()
    with client.app.state.services.sessions() as db:
        Path(db.get(Dataset, dataset["id"]).path).unlink()
    response = client.get(f"/v1/datasets/{dataset['id']}/preview", headers=auth())
    assert response.status_code == 409 and "mine.jsonl" in response.json()["detail"], response.text


def test_uploading_a_stored_file_again_returns_the_existing_dataset(client, auth, upload, settings):
    content = jsonl({"text": "the same bytes"})
    first = upload(content)
    again = upload(content, filename="renamed.jsonl")
    assert first.status_code == 201 and "Mol-Existing-Dataset" not in first.headers
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["Mol-Existing-Dataset"] == first.json()["id"]
    assert len(list(settings.datasets_dir.iterdir())) == 1  # no second copy kept
    assert upload(content, purpose="general").status_code == 201  # another purpose: another dataset
    assert upload(content, owner="bob").status_code == 201  # another owner's: never shared

    parts = client.post("/v1/uploads", headers=auth(), json={"filename": "c.jsonl", "purpose": "domain",
                                                             "bytes": len(content)}).json()
    headers = auth() | {"Content-Type": "application/octet-stream"}
    assert client.put(f"/v1/uploads/{parts['id']}/parts/0", headers=headers, content=content).status_code == 200
    done = client.post(f"/v1/uploads/{parts['id']}/complete", headers=auth(), json={})
    assert done.status_code == 200 and done.json()["id"] == first.json()["id"]
    assert done.headers["Mol-Existing-Dataset"] == first.json()["id"]
    upload_now = client.get(f"/v1/uploads/{parts['id']}", headers=auth()).json()
    assert upload_now["status"] == "completed" and upload_now["dataset_id"] == first.json()["id"]
