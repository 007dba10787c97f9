import json
import math

import pytest

from store.db import Job, MetricPoint
from tests.version_8 import create_version_8_tables

DOCS = "".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(5))


@pytest.fixture
def base(upload):
    ids = {p: upload(DOCS, purpose=p).json()["id"] for p in ("domain", "general")}
    return {"name": "legal", "base_model": "tiny", "domain_data": [ids["domain"]], "general_data": [ids["general"]],
            "max_steps": 10, "eval_every": 5, "seed": 3, "seq_len": 64}


def test_a_sweep_makes_one_queued_job_per_grid_point(client, auth, base, queued):
    response = client.post("/v1/sweeps", headers=auth(), json={"base": base, "grid": {
        "ratio": ["4:1", "1:2"], "kl_weight": [0.5, 1]}})
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["id"].startswith("swp_") and sweep["name"] == "legal" and sweep["jobs"] == 4
    assert sweep["statuses"] == {"queued": 4} and sweep["frontier"] == []
    assert sorted(queued) == sorted(j["id"] for j in sweep["data"])
    with client.app.state.services.sessions() as db:
        jobs = [db.get(Job, j["id"]) for j in sweep["data"]]
    assert {(j.spec["ratio"], j.spec["kl_weight"]) for j in jobs} == {("4:1", 0.5), ("4:1", 1.0), ("1:2", 0.5),
                                                                     ("1:2", 1.0)}
    assert all(j.sweep_id == sweep["id"] and j.spec["seed"] == 3 and j.spec["domain_data"] == base["domain_data"]
               for j in jobs)
    assert "legal [ratio=4:1 kl_weight=0.5]" in {j.name for j in jobs}
    assert {j["values"]["ratio"] for j in sweep["data"]} == {"4:1", "1:2"}
    listed = client.get("/v1/sweeps", headers=auth()).json()
    assert [s["id"] for s in listed["data"]] == [sweep["id"]] and listed["data"][0]["statuses"] == {"queued": 4}
    job = client.get(f"/v1/jobs/{queued[0]}", headers=auth()).json()  # ordinary jobs, which know their sweep
    assert job["sweep_id"] == sweep["id"] and job["name"].startswith("legal [ratio=")


@pytest.mark.parametrize(("body", "message"), [
    ({"grid": {"lr": [1e-3 * (i + 1) for i in range(11)], "kl_weight": [0.1, 0.5, 1]}},
     "grid: 11 x 3 = 33 jobs, more than the cap of 32 jobs per sweep"),
    ({"grid": {"seed": [1, 2]}}, "grid: unknown key 'seed'"),
    ({"grid": {"kl_weight": [1, -1]}}, "grid point kl_weight=-1: invalid job spec:\nkl_weight: Input should be"),
    ({"grid": {"ratio": ["1:1"]}, "base": {"base_model": "tiny"}}, "base.domain_data: Field required"),
    ({"grid": {"ratio": ["1:1"]}, "base": {"base_model": "gpt-9", "domain_data": ["ds_nope"],
                                           "method": "domain_only"}}, "base_model: unknown model 'gpt-9'"),
])
def test_bad_sweeps_are_a_422_naming_the_problem(client, auth, base, queued, body, message):
    response = client.post("/v1/sweeps", headers=auth(), json={"base": base} | body)
    assert response.status_code == 422 and message in response.json()["detail"], response.text
    assert queued == [] and client.get("/v1/sweeps", headers=auth()).json()["data"] == []


def test_sweeps_are_their_owner_s(client, auth, base):
    response = client.post("/v1/sweeps", headers=auth("bob"), json={"base": base, "grid": {"lr": [1e-3]}})
    assert response.status_code == 422 and "unknown dataset" in response.text  # alice's datasets
    sweep = client.post("/v1/sweeps", headers=auth(), json={"base": base, "grid": {"lr": [1e-3]}}).json()
    assert client.get(f"/v1/sweeps/{sweep['id']}", headers=auth("bob")).status_code == 404
    assert client.get("/v1/sweeps", headers=auth("bob")).json()["data"] == []
    assert client.get("/v1/sweeps/swp_nope", headers=auth()).status_code == 404


def test_the_frontier_comes_from_the_jobs_evaluations(client, auth, base):
    grid = {"kl_weight": [0.1, 0.5, 1, 2]}
    sweep = client.post("/v1/sweeps", headers=auth(), json={"base": base, "grid": grid}).json()
    by_weight = {j["values"]["kl_weight"]: j["id"] for j in sweep["data"]}
    # final (domain ppl, KL) at step 10 after a base ppl of 20: 0.1 gains most, 1 drifts least, 0.5 is dominated
    # by 2 (less gain, more drift); 2 sits between
    finals = {0.1: (5.0, 0.40), 0.5: (10.0, 0.30), 1.0: (16.0, 0.05), 2.0: (8.0, 0.20)}
    with client.app.state.services.sessions.begin() as db:
        for weight, (ppl, kl) in finals.items():
            job_id = by_weight[weight]
            db.get(Job, job_id).step = 10
            db.add_all([
                MetricPoint(job_id=job_id, step=0, values={"eval/domain_ppl": 20.0, "eval/general_kl": 0.0}),
                MetricPoint(job_id=job_id, step=5, values={"eval/domain_ppl": 3.0, "eval/general_kl": 0.01}),
                MetricPoint(job_id=job_id, step=7, values={"train/ce": 1.0}),
                MetricPoint(job_id=job_id, step=10, values={"train/ce": 1.0}),
                MetricPoint(job_id=job_id, step=10, values={"eval/domain_ppl": ppl, "eval/general_kl": kl})])
    got = client.get(f"/v1/sweeps/{sweep['id']}", headers=auth()).json()
    assert got["frontier"] == [by_weight[1.0], by_weight[2.0], by_weight[0.1]]  # lowest drift first
    assert [j["values"]["kl_weight"] for j in got["data"]] == [0.1, 2.0, 0.5, 1.0]  # best gain first
    rows = {j["values"]["kl_weight"]: j for j in got["data"]}
    assert rows[0.1]["gain"] == pytest.approx(math.log(20 / 5)) and rows[0.1]["drift"] == 0.40
    assert [w for w, j in rows.items() if not j["on_frontier"]] == [0.5]


def test_a_refused_enqueue_withdraws_the_jobs_not_queued(settings, base):
    from fastapi.testclient import TestClient

    from api.app import create_app

    sent, broker = [], {"takes": 1}  # the broker takes one job, then refuses

    def enqueue(job_id, **_kw):
        if len(sent) >= broker["takes"]:
            raise ConnectionError("broker down")
        sent.append(job_id)

    headers = {"Authorization": "Bearer tok-alice"}
    with TestClient(create_app(settings, enqueue=enqueue)) as client:
        ids = {p: client.post("/v1/datasets", headers=headers, data={"purpose": p},
                              files={"file": ("d.jsonl", DOCS)}).json()["id"] for p in ("domain", "general")}
        body = {"base": base | {"domain_data": [ids["domain"]], "general_data": [ids["general"]]},
                "grid": {"lr": [1e-3, 1e-4, 1e-5]}}
        response = client.post("/v1/sweeps", headers=headers, json=body)
        assert response.status_code == 503 and "1 of 3 jobs of sweep" in response.json()["detail"], response.text
        assert [j["id"] for j in client.get("/v1/jobs", headers=headers).json()["data"]] == sent  # the others gone
        assert client.get("/v1/sweeps", headers=headers).json()["data"][0]["jobs"] == 1
        broker["takes"] = 0  # every job refused: no job and no sweep is left
        response = client.post("/v1/sweeps", headers=headers, json=body)
        assert response.status_code == 503 and "no job was created" in response.json()["detail"], response.text
        assert len(client.get("/v1/sweeps", headers=headers).json()["data"]) == 1


def test_a_version_6_database_gains_the_sweeps(tmp_path):
    from sqlalchemy import inspect, select, text

    from store.db import SCHEMA_VERSION, SchemaVersion, init_db, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'mol.db'}")
    create_version_8_tables(engine)  # the models' newer tables and columns come from later revisions
    with engine.begin() as conn:  # the shape version 6 left behind
        conn.execute(text("DROP TABLE sweeps"))
        conn.execute(text("DROP INDEX ix_jobs_sweep_id"))
        conn.execute(text("ALTER TABLE jobs DROP COLUMN sweep_id"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (6)"))
    sessions = init_db(engine)
    assert "ix_jobs_sweep_id" in {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert "sweeps" in inspect(engine).get_table_names()
    with sessions() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
    engine.dispose()


def test_a_sweep_keeps_its_values_as_validated_not_as_sent(client, auth, base):
    padded = " 4 :  1" + " " * 50  # within the bound, and what JobSpec reads as 4:1
    body = {"base": base | {"ratio": " 2 : 1 "}, "grid": {"ratio": [padded, "1:2"], "lr": ["0.001", 2e-3]}}
    response = client.post("/v1/sweeps", headers=auth(), json=body)
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert sweep["grid"] == {"ratio": ["4:1", "1:2"], "lr": [0.001, 0.002]}
    assert sweep["base_spec"]["ratio"] == "2:1" and set(sweep["base_spec"]) == set(base) | {"ratio"}
    again = client.get(f"/v1/sweeps/{sweep['id']}", headers=auth()).json()
    assert again["grid"] == sweep["grid"] and again["base_spec"] == sweep["base_spec"]
    assert client.get("/v1/sweeps", headers=auth()).json()["data"][0]["grid"] == sweep["grid"]


@pytest.mark.parametrize(("grid", "field"), [
    ({"ratio": ["4:1" + " " * 1_000_000]}, "grid.ratio.0"),  # a padded value is refused, not stored
    ({"lr": [1e-3 * (i + 1) for i in range(257)]}, "grid.lr: List should have at most 256 items"),
    ({"lr": [[1e-3] * 10]}, "grid.lr.0"),
])
def test_a_sweep_s_grid_is_bounded(client, auth, base, queued, grid, field):
    response = client.post("/v1/sweeps", headers=auth(), json={"base": base, "grid": grid})
    assert response.status_code == 422 and field in response.json()["detail"], response.text
    assert queued == []


def test_the_grid_editor_reads_the_server_s_bounds(client, auth, settings):
    response = client.get("/v1/sweeps/bounds", headers=auth())
    assert response.status_code == 200, response.text
    assert response.json() == {"keys": ["ratio", "kl_weight", "lr", "method"], "max_values": 256,
                               "max_jobs": settings.max_sweep_jobs}
    assert client.get("/v1/sweeps/bounds").status_code == 401
