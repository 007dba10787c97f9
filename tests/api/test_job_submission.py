"""POST /v1/jobs once: an Idempotency-Key makes a retry return the same job, and a refused enqueue leaves no job."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.app import create_app
from mol_engine.spec import JobSpec
from store.db import IdempotencyKey, Job
from store.jobs import create_job

DOCS = "".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(5))
QA = json.dumps({"question": "What is 1 plus 1?", "answer": "2"}) + "\n"


def spec(datasets, **extra):
    return {"name": "t", "base_model": "tiny", "domain_data": [datasets["domain"]],
            "general_data": [datasets["general"]], "eval_data": datasets["eval"], "max_steps": 5,
            "seq_len": 64} | extra


@pytest.fixture
def datasets(upload):
    return {p: upload(DOCS if p != "eval" else QA, purpose=p).json()["id"] for p in ("domain", "general", "eval")}


def listed(client, auth, owner: str = "alice") -> list[str]:
    return [j["id"] for j in client.get("/v1/jobs", headers=auth(owner)).json()["data"]]


def test_a_retry_with_the_same_key_returns_the_same_job(client, auth, datasets, queued):
    headers = auth() | {"Idempotency-Key": "submit-1"}
    first = client.post("/v1/jobs", headers=headers, json=spec(datasets))
    again = client.post("/v1/jobs", headers=headers, json=spec(datasets, ratio="1:1"))  # the default, spelt out
    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert again.json()["id"] == first.json()["id"] and queued == [first.json()["id"]]
    assert listed(client, auth) == [first.json()["id"]]


def test_the_same_key_with_another_body_is_refused(client, auth, datasets, queued):
    headers = auth() | {"Idempotency-Key": "submit-1"}
    first = client.post("/v1/jobs", headers=headers, json=spec(datasets)).json()
    response = client.post("/v1/jobs", headers=headers, json=spec(datasets, max_steps=6))
    assert response.status_code == 409 and response.json()["detail"].startswith("Idempotency-Key: 'submit-1'")
    assert listed(client, auth) == [first["id"]] and queued == [first["id"]]


def test_keys_are_per_owner_and_expire_after_a_day(client, auth, upload, datasets, queued):
    mine = client.post("/v1/jobs", headers=auth() | {"Idempotency-Key": "k"}, json=spec(datasets)).json()
    bobs = {p: upload(DOCS if p != "eval" else QA, purpose=p, owner="bob").json()["id"]
            for p in ("domain", "general", "eval")}
    theirs = client.post("/v1/jobs", headers=auth("bob") | {"Idempotency-Key": "k"}, json=spec(bobs))
    assert theirs.status_code == 201 and theirs.json()["id"] != mine["id"]
    with client.app.state.services.sessions.begin() as db:
        db.execute(update(IdempotencyKey).values(created_at=IdempotencyKey.created_at - timedelta(hours=25)))
    later = client.post("/v1/jobs", headers=auth() | {"Idempotency-Key": "k"}, json=spec(datasets, max_steps=6))
    assert later.status_code == 201 and later.json()["id"] != mine["id"] and len(queued) == 3


@pytest.mark.parametrize("key", ["", "x" * 256, "a\tb"])
def test_absurd_keys_are_refused_naming_the_header(client, auth, datasets, queued, key):
    response = client.post("/v1/jobs", headers=auth() | {"Idempotency-Key": key}, json=spec(datasets))
    assert response.status_code == 422 and "idempotency-key" in response.json()["detail"].lower(), response.text
    assert queued == [] and listed(client, auth) == []


def test_a_refused_enqueue_answers_503_and_leaves_no_job(settings, auth, queued):
    def broker(job_id: str) -> None:
        if down:
            raise ConnectionError("Error 111 connecting to localhost:6379. Connection refused.")
        queued.append(job_id)

    down = True
    with TestClient(create_app(settings, enqueue=broker)) as client:
        ids = {p: client.post("/v1/datasets", headers=auth(), data={"purpose": p},
                              files={"file": ("d.jsonl", DOCS if p != "eval" else QA)}).json()["id"]
               for p in ("domain", "general", "eval")}
        headers = auth() | {"Idempotency-Key": "while-down"}
        response = client.post("/v1/jobs", headers=headers, json=spec(ids))
        assert response.status_code == 503, response.text
        assert "no job was created" in response.json()["detail"] and "ConnectionError" in response.json()["detail"]
        assert listed(client, auth) == [] and queued == []
        down = False  # the broker is back: the retry, with the same key, makes the one job
        retry = client.post("/v1/jobs", headers=headers, json=spec(ids))
        assert retry.status_code == 201 and listed(client, auth) == [retry.json()["id"]] == queued


def test_requests_racing_with_one_key_make_one_job(client, datasets):
    sessions = client.app.state.services.sessions
    job_spec = JobSpec.model_validate(spec(datasets))
    start = threading.Barrier(6)

    def submit(_i: int) -> tuple[str, bool]:
        start.wait()
        job, new = create_job(sessions, "alice", job_spec, "race")
        return job.id, new

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(submit, range(6)))
    assert len({job_id for job_id, _ in results}) == 1 and [new for _, new in results].count(True) == 1
    with sessions() as db:
        assert db.scalar(select(func.count()).select_from(Job)) == 1


def test_a_seq_len_beyond_the_models_context_is_a_422_naming_it_and_the_limit(client, auth, datasets, queued):
    response = client.post("/v1/jobs", headers=auth(), json=spec(datasets, seq_len=4096))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("seq_len: 4096") and "'tiny'" in detail and "max_position_embeddings 256" in detail
    assert queued == [] and listed(client, auth) == []
    assert client.post("/v1/jobs", headers=auth(), json=spec(datasets, seq_len=256)).status_code == 201  # the limit


def test_a_micro_batch_no_worker_could_hold_is_a_422_naming_the_fields(client, auth, datasets, queued):
    response = client.post("/v1/jobs", headers=auth(), json=spec(datasets, seq_len=256, batch_size=1024))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("batch_size, seq_len: a micro-batch of 1024 x 256 = 262144 tokens"), detail
    assert "MOL_MAX_MICROBATCH_TOKENS" in detail and queued == []
    fits = spec(datasets, seq_len=256, batch_size=512, grad_accum=2)  # 131072 tokens: the default bound, not over
    assert client.post("/v1/jobs", headers=auth(), json=fits).status_code == 201
