"""Secrets and surface: tokens that cannot crash auth, the cookie only for reads, no paths, no wildcard CORS."""

import json
import logging

import pytest
from pydantic import ValidationError

from store.settings import Settings

DOCS = "".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(5))
QA = json.dumps({"question": "What is 1 plus 1?", "answer": "2"}) + "\n"


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer t\u00f6k\u20ac".encode()},
    {"Cookie": "mol_token=t\u00f6k\u20ac".encode()},
    {"Authorization": "Bearer caf\u00e9".encode("latin-1")},
])
def test_non_ascii_tokens_are_refused_not_crashed(client, headers):
    response = client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401, response.text


def test_cookie_alone_cannot_write_from_another_site(client, auth, upload):
    ids = {p: upload(DOCS if p != "eval" else QA, purpose=p).json()["id"] for p in ("domain", "general", "eval")}
    job = client.post("/v1/jobs", headers=auth(), json={
        "name": "t", "base_model": "tiny", "domain_data": [ids["domain"]], "general_data": [ids["general"]],
        "eval_data": ids["eval"], "max_steps": 5, "seq_len": 64}).json()
    assert client.post("/v1/session", headers=auth()).status_code == 200  # the browser now holds the cookie
    forged = client.post(f"/v1/jobs/{job['id']}/cancel", headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403 and "Authorization: Bearer" in forged.json()["detail"]
    assert client.delete(f"/v1/datasets/{ids['domain']}").status_code == 403
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # reads still take the cookie
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth()).json()["status"] == "cancelled"


def test_models_name_no_server_path(client, auth, settings):
    models = client.get("/v1/models", headers=auth()).json()
    (tiny,) = models["data"]
    assert tiny == {"id": "tiny", "object": "model", "created": tiny["created"], "owned_by": "mol-studio",
                    "model_type": "llama", "kind": "base", "job_name": None, "checkpoint": None, "step": None}
    assert str(settings.models_dir) not in json.dumps(models)


@pytest.mark.parametrize("origins", [["*"], ["https://ok.example", "*"]])
def test_wildcard_cors_origin_is_refused_at_start(origins, monkeypatch):
    with pytest.raises(ValidationError, match="MOL_CORS_ORIGINS"):
        Settings(cors_origins=origins)
    monkeypatch.setenv("MOL_CORS_ORIGINS", json.dumps(origins))
    with pytest.raises(ValidationError, match="credentials"):
        Settings()


def test_listed_cors_origin_is_allowed_with_credentials(tmp_path, queued):
    from fastapi.testclient import TestClient

    from api.app import create_app

    settings = Settings(home=tmp_path / "home", demo_model=False, cors_origins=["https://ok.example"])
    with TestClient(create_app(settings, enqueue=queued.append)) as client:
        ok = client.get("/healthz", headers={"Origin": "https://ok.example"})
        other = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert ok.headers["access-control-allow-origin"] == "https://ok.example"
    assert "access-control-allow-origin" not in other.headers


def _access_record(path: str) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it."""
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:5000", "GET", path, "1.1", 200), None)


def test_access_log_redacts_tokens():
    from api.logs import RedactTokens

    record = _access_record("/?token=mol_s3cret-Value_x&tab=jobs")
    assert RedactTokens().filter(record) is True
    line = record.getMessage()
    assert "s3cret" not in line and "/?token=[redacted]&tab=jobs" in line
    plain = _access_record("/v1/jobs?after=3")
    RedactTokens().filter(plain)
    assert plain.getMessage().endswith('"GET /v1/jobs?after=3 HTTP/1.1" 200')


def test_app_startup_installs_the_redaction(settings, queued):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.logs import RedactTokens

    access = logging.getLogger("uvicorn.access")
    for found in [f for f in access.filters if isinstance(f, RedactTokens)]:  # left by apps started before
        access.removeFilter(found)
    app = create_app(settings, enqueue=queued.append)
    for _ in range(2):  # started twice, filtered once
        with TestClient(app):
            assert sum(isinstance(f, RedactTokens) for f in access.filters) == 1


def _finished_job_with_a_checkpoint(client, settings) -> str:
    """A succeeded job of alice's with a (tiny, fake) step-2 checkpoint, written straight to the store."""
    from mol_engine.checkpoint import STATE_FILE
    from store.db import Job, utcnow

    with client.app.state.services.sessions.begin() as db:
        job = Job(owner="alice", name="done", spec={"base_model": "tiny", "method": "mol"}, status="succeeded",
                  step=2, max_steps=2, last_metrics={}, started_at=utcnow(), finished_at=utcnow())
        db.add(job)
    step = settings.runs_dir / job.id / "checkpoints" / "step-2"
    (step / "model").mkdir(parents=True)
    (step / STATE_FILE).write_text("{}")
    (step / "model" / "config.json").write_text("{}")
    return job.id


def test_head_on_the_api_answers_as_get_without_a_body(client, auth, settings):
    job_id = _finished_job_with_a_checkpoint(client, settings)
    assert client.post("/v1/session", headers=auth()).status_code == 200  # the browser now holds the cookie
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/checkpoints/step-2/download", "/healthz"):
        got, head = client.get(path), client.head(path)
        assert got.status_code == head.status_code == 200, (path, head.status_code)
        assert head.content == b"" and got.content != b""
        assert head.headers["content-type"] == got.headers["content-type"]
    job = client.get(f"/v1/jobs/{job_id}")
    assert client.head(f"/v1/jobs/{job_id}").headers["content-length"] == str(len(job.content))
    assert client.head("/v1/jobs/job_nope").status_code == 404
    client.cookies.clear()
    assert client.head(f"/v1/jobs/{job_id}").status_code == 401
