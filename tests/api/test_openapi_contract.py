"""The OpenAPI document is true: schemathesis sends generated requests to the app in-process and checks each answer.

Checks: no 5xx, every answer's status and media type documented for its route, every JSON body valid against the
documented schema. Fixed seed and a bounded number of examples per route, so a run is repeatable and short. On
SQLite, authenticated as alice (an unauthenticated request only shows the 401 that every route documents).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, seed, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from store.settings import Settings
from tests.api.conftest import TOKENS

ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorOut"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
AUTH = {"Authorization": f"Bearer {TOKENS['alice']}"}


def make_app(home: Path):
    settings = Settings(home=home / "home", models_dir=home / "models", demo_model=False, max_upload_mb=0.05,
                        tokens=",".join(f"{o}:{t}" for o, t in TOKENS.items()))
    return create_app(settings, enqueue=lambda _job_id: None)


# Built at import: schemathesis makes one test per operation at collection (its fixture-based loader does not
# run on this pytest)
HOME = tempfile.TemporaryDirectory(prefix="mol-contract-")
APP = make_app(Path(HOME.name))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _remove_home():
    yield
    HOME.cleanup()


@pytest.fixture(scope="module")
def document() -> dict:
    return APP.openapi()


@schema.parametrize()
@seed(20261129)
@settings(max_examples=20, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_answers_match_the_document(case):
    case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=120)  # a busy 2-core CI machine stalls at times


def seed_objects(app) -> dict[str, str]:
    """One of each object, owned by alice: a dataset, an upload, a finished job with a metric point (one value
    non-finite), an event and a checkpoint."""
    from fastapi.testclient import TestClient

    from api.webhooks import create_endpoint
    from mol_engine.checkpoint import STATE_FILE
    from store.db import Job, JobEvent, MetricPoint, utcnow
    from store.webhook_outbox import record_job_event_for_webhooks

    with TestClient(app) as client:
        made = client.post("/v1/datasets", headers=AUTH, data={"purpose": "domain"},
                           files={"file": ("d.jsonl", b'{"text": "a document"}\n', "application/octet-stream")})
        upload = client.post("/v1/uploads", headers=AUTH, json={"filename": "b.jsonl", "purpose": "domain", "bytes": 4})
    with app.state.services.sessions() as db:
        job = Job(owner="alice", name="seeded", spec={"base_model": "tiny", "method": "mol"}, status="succeeded",
                  step=2, max_steps=2, last_metrics={"train/ce": 2.5}, started_at=utcnow(), finished_at=utcnow())
        db.add(job)
        db.flush()
        db.add_all([MetricPoint(job_id=job.id, step=1, values={"train/ce": 2.5, "train/general_kl": None}),
                    JobEvent(job_id=job.id, step=2, kind="succeeded", message="done", data={"step": 2})])
        db.commit()
    step = app.state.services.settings.runs_dir / job.id / "checkpoints" / "step-2"
    (step / "model").mkdir(parents=True)
    (step / STATE_FILE).write_text("{}")
    (step / "model" / "config.json").write_text("{}")
    with app.state.services.sessions() as db:  # a webhook endpoint with one delivery of that job's end
        # no cap: the fuzzed requests of the tests before may have made alice the most endpoints a route allows
        endpoint = create_endpoint(db, "alice", "https://hooks.example.com/mol", None, max_endpoints=sys.maxsize)
        record_job_event_for_webhooks(db, db.get(Job, job.id), "succeeded")
        db.commit()
    return {"dataset_id": made.json()["id"], "upload_id": upload.json()["id"], "job_id": job.id, "name": step.name,
            "endpoint_id": endpoint.id}


def test_real_objects_match_the_document():
    """Generated ids only find nothing (404): these requests read real objects, checked against their schemas."""
    ids = seed_objects(APP)
    reads = ["/v1/datasets", "/v1/datasets/{dataset_id}", "/v1/uploads/{upload_id}", "/v1/jobs", "/v1/jobs/{job_id}",
             "/v1/jobs/{job_id}/metrics", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/checkpoints",
             "/v1/jobs/{job_id}/checkpoints/{name}/download", "/v1/webhooks", "/v1/webhooks/{endpoint_id}/deliveries",
             "/healthz"]
    for path in reads:
        names = [name for name in ids if "{" + name + "}" in path]
        case = schema[path]["GET"].Case(path_parameters={name: ids[name] for name in names})
        answer = case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=120)
        assert answer.status_code == 200, (path, answer.text)
        if path.endswith("/download"):
            assert answer.headers["content-type"] == ["application/gzip"]
        else:
            assert answer.json(), path  # something was read and checked: not an empty list


def test_every_route_with_the_bearer_scheme_refuses_a_request_without_a_token(document):
    guarded = [(path, method) for path, operations in document["paths"].items()
               for method, operation in operations.items() if "security" in operation]
    assert len(guarded) >= 20
    for path, method in guarded:
        operation = schema[path][method.upper()]
        case = operation.Case(path_parameters={p.name: "x" for p in operation.path_parameters})
        answer = case.call_and_validate(checks=CHECKS, timeout=120)
        assert answer.status_code == 401, (method, path, answer.text)


def test_every_error_has_one_documented_shape(document):
    assert "HTTPValidationError" not in document["components"]["schemas"]  # FastAPI's list-shaped 422 is not ours
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/healthz":  # its 503 is the health report
                    assert answer["content"]["application/json"]["schema"] == ERROR_SCHEMA, (method, path, status)


def test_self_read_bodies_are_described(document):
    paths = document["paths"]
    job_body = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert job_body["$ref"] == "#/components/schemas/JobSpec"
    assert "domain_data" in document["components"]["schemas"]["JobSpec"]["required"]
    assert "LoraSpec" in document["components"]["schemas"]  # nested models land beside it
    form = paths["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "purpose"]
    assert "application/octet-stream" in paths["/v1/uploads/{upload_id}/parts/{index}"]["put"]["requestBody"]["content"]
    assert paths["/v1/jobs/{job_id}"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in paths["/healthz"]["get"]


def test_a_framework_422_is_a_string_too():
    from fastapi.testclient import TestClient

    with TestClient(APP) as client:
        answer = client.get("/v1/jobs", params={"limit": 0}, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["detail"] == "query.limit: Input should be greater than or equal to 1"
