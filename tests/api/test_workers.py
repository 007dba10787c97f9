"""GET /v1/workers: the workers seen, with device, capacity, heartbeat and (to its owner) the job each runs."""

from datetime import timedelta

from sqlalchemy import select, text

from store.db import SCHEMA_VERSION, Job, SchemaVersion, WorkerSeen, init_db, make_engine, utcnow
from tests.api.conftest import tiny_job_spec
from tests.version_8 import create_version_8_tables
from worker.devices import describe_device, device_memory_mib, host_memory_mib


def test_workers_show_device_capacity_heartbeat_and_their_owner_s_job(client, auth, upload, settings):
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload, name="mine")).json()["id"]
    now = utcnow()
    with client.app.state.services.sessions.begin() as db:
        db.add_all([WorkerSeen(name="gpu-1:10", last_seen=now, capacity=2, device="cuda: 2 x NVIDIA H100 (GPUs 0,1)",
                               memory_mib=81559, job_id=job_id),
                    WorkerSeen(name="cpu-1:11", last_seen=now - timedelta(seconds=5), device="cpu (8 cores)"),
                    WorkerSeen(name="gone:12", last_seen=now - timedelta(seconds=settings.lease_timeout_s + 60)),
                    WorkerSeen(name="ancient:13", last_seen=now - timedelta(hours=settings.workers_listed_h + 1))])
    response = client.get("/v1/workers", headers=auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["alive_within_s"] == settings.lease_timeout_s
    rows = {w["name"]: w for w in body["data"]}
    assert [w["name"] for w in body["data"]] == ["gpu-1:10", "cpu-1:11", "gone:12"]  # alive first; ancient gone
    assert rows["gpu-1:10"] | {"last_seen": None} == {
        "name": "gpu-1:10", "alive": True, "device": "cuda: 2 x NVIDIA H100 (GPUs 0,1)", "capacity": 2,
        "memory_mib": 81559, "last_seen": None, "busy": True, "job_id": job_id, "job_name": "mine"}
    assert rows["cpu-1:11"]["busy"] is False and rows["cpu-1:11"]["job_id"] is None
    assert rows["gone:12"]["alive"] is False and rows["gone:12"]["device"] is None
    # another owner sees the worker busy, not whose job it runs
    theirs = {w["name"]: w for w in client.get("/v1/workers", headers=auth("bob")).json()["data"]}["gpu-1:10"]
    assert theirs["busy"] is True and theirs["job_id"] is None and theirs["job_name"] is None
    assert client.get("/v1/workers").status_code == 401
    assert "limit" in client.get("/v1/workers?limit=0", headers=auth()).json()["detail"]


def test_a_version_7_database_gains_the_workers_device_and_job(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'mol.db'}")
    create_version_8_tables(engine)  # the models' newer tables and columns come from later revisions
    with engine.begin() as conn:  # the shape version 7 left behind, with a worker seen
        conn.execute(text("ALTER TABLE workers_seen DROP COLUMN device"))
        conn.execute(text("ALTER TABLE workers_seen DROP COLUMN job_id"))
        conn.execute(text("INSERT INTO workers_seen (name, last_seen, capacity) VALUES ('old', '2026-01-01', 1)"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (7)"))
    sessions = init_db(engine)
    with sessions() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
        old = db.get(WorkerSeen, "old")
        assert old.device is None and old.job_id is None and db.scalars(select(Job)).all() == []
    engine.dispose()


def test_a_worker_describes_its_device_without_torch():
    names = {"0": "NVIDIA H100", "1": "NVIDIA H100", "2": "NVIDIA A10"}
    assert describe_device({"CUDA_VISIBLE_DEVICES": "0,1"}, names) == "cuda: 2 x NVIDIA H100 (GPUs 0,1)"
    assert describe_device({}, names) == "cuda: NVIDIA H100, NVIDIA A10 (GPUs 0,1,2)"
    assert describe_device({"CUDA_VISIBLE_DEVICES": "3"}, {}) == "cuda (GPUs 3)"  # no nvidia-smi here
    assert describe_device({"CUDA_VISIBLE_DEVICES": ""}, names).startswith("cpu (")
    assert describe_device({}, {}).startswith("cpu (")


def test_a_worker_says_the_memory_one_job_process_has(tmp_path):
    memories = {"0": 81559, "1": 81559, "2": 24564}
    assert device_memory_mib({"CUDA_VISIBLE_DEVICES": "0,1"}, memories, host=64_000) == 81559
    assert device_memory_mib({}, memories, host=64_000) == 24564  # the smallest GPU: each process takes one
    assert device_memory_mib({"CUDA_VISIBLE_DEVICES": "3"}, {}, host=64_000) is None  # a GPU of unknown memory
    assert device_memory_mib({"CUDA_VISIBLE_DEVICES": ""}, memories, host=64_000) == 64_000  # CPU: the host's RAM
    assert device_memory_mib({}, {}, host=64_000) == 64_000
    limit = tmp_path / "memory.max"
    limit.write_text(f"{2**30}\n")
    assert host_memory_mib(limit) == 1024  # a container's cgroup limit below the host's RAM
    limit.write_text("max\n")
    assert host_memory_mib(limit) > 1024
