"""The OpenAPI document is true: schemathesis sends generated requests to the app in-process and checks each answer.

Checks: no 5xx, every answer's status and media type documented for its route, every JSON body valid against the
documented schema. Fixed seed and a bounded number of examples per route, so a run is repeatable and short. On
SQLite, authenticated as alice (an unauthenticated request only shows the 401 that every route documents).
"""

from __future__ import annotations

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
from api.settings import Settings
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
