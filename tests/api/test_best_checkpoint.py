"""The forgetting budget and the best checkpoint through the service: a job stopped by its budget (succeeded,
reason budget), the `best` alias in the checkpoint list and the download, its 409 before any evaluation, the 422
for a bad budget, and the schema step that adds the stop reason."""

import importlib
import io
import json
import tarfile

import pytest
from sqlalchemy import select, text

from mol_engine.budget import checkpoint_path
from store.db import SCHEMA_VERSION, Job, SchemaVersion, init_db, make_engine
from tests.api.conftest import tiny_job_spec
from tests.version_8 import create_version_8_tables
from worker.runner import run

train_module = importlib.import_module("mol_engine.train")
SQLITE = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the runs are the cost, not the database


def job_spec(upload, **fields) -> dict:
    return tiny_job_spec(upload, max_steps=6, **fields)


@SQLITE
def test_a_budget_stop_ends_succeeded_and_best_resolves_to_the_best_step_within_it(client, auth, upload, settings,
                                                                                  monkeypatch):
    # evaluations at steps 0, 2, 4 report these (domain_ppl, general_kl): step 4 crosses 0.3 and is the lower ppl
    figures, heldout = iter([(20.0, 0.0), (9.0, 0.1), (5.0, 0.5)]), train_module.heldout_metrics
    monkeypatch.setattr(train_module, "heldout_metrics", lambda *a, **k: heldout(*a, **k) | dict(
        zip(("eval/domain_ppl", "eval/general_kl"), next(figures), strict=True)))
    spec = job_spec(upload, max_general_kl=0.3, on_budget="stop", budget_patience=1, keep_checkpoints=1)
    job_id = client.post("/v1/jobs", headers=auth(), json=spec).json()["id"]
    assert run(job_id, settings) == "succeeded"

    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert (job["status"], job["stop_reason"], job["step"]) == ("succeeded", "budget", 4)
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth()).json()
    budget = [e for e in events if e["kind"] == "budget"]
    assert len(budget) == 1 and budget[0]["step"] == 4 and "0.5 nats/token > max_general_kl = 0.3" in budget[0][
        "message"]
    # keep_checkpoints=1 still keeps the best (step 2, within the budget) beside the crossing (step 4)
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth()).json()
    assert [(c["name"], c["best"]) for c in listed] == [("step-2", True), ("step-4", False)]
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/best/download", headers=auth())
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        assert {n.split("/")[0] for n in tar.getnames()} == {f"{job_id}-step-2"}
    run_dir = settings.runs_dir / job_id
    assert checkpoint_path(run_dir / "checkpoints" / "best") == run_dir / "checkpoints" / "step-2"  # mol export


def test_best_before_any_evaluation_is_a_409(client, auth, upload):
    job_id = client.post("/v1/jobs", headers=auth(), json=job_spec(upload)).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth()).json() == []
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/best/download", headers=auth())
    assert response.status_code == 409 and "no best checkpoint yet" in response.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["stop_reason"] is None


@pytest.mark.parametrize("budget", [0, -1, 1e999])  # 1e999 reads as infinity
def test_a_budget_that_is_not_positive_and_finite_is_a_422_naming_it(client, auth, upload, budget):
    body = json.dumps(job_spec(upload, max_general_kl=budget)).replace("Infinity", "1e999")
    response = client.post("/v1/jobs", headers=auth() | {"Content-Type": "application/json"}, content=body)
    assert response.status_code == 422 and response.json()["detail"].startswith("max_general_kl: "), response.text


def test_a_version_4_database_gains_the_stop_reason(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'mol.db'}")
    create_version_8_tables(engine)  # the models' newer tables and columns come from later revisions
    with engine.begin() as conn:  # the shape version 4 left behind, with a finished job
        conn.execute(text("ALTER TABLE jobs DROP COLUMN stop_reason"))
        conn.execute(text("INSERT INTO jobs (id, owner, name, spec, status, step, max_steps, last_metrics, "
                          "cancel_requested, attempt, created_at, queued_at) VALUES ('job_old', 'a', 'n', '{}', "
                          "'succeeded', 3, 3, '{}', 0, 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (4)"))
    sessions = init_db(engine)
    with sessions() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
        assert db.get(Job, "job_old").stop_reason is None
    engine.dispose()
