"""Jobs on several processes through the service: a worker started as ``mol worker --procs 2`` runs an
``nproc: 2`` job under torchrun (CPU, gloo); rank 0 alone records; cancel ends every rank; a job larger than
every worker is refused at submit."""

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from api.service import worker_env
from mol_cli.main import main
from store.db import SCHEMA_VERSION, SchemaVersion, WorkerSeen, init_db, make_engine
from store.dispatch import celery_app
from store.settings import Settings
from tests.version_8 import create_version_8_tables


def status(api, job_id):
    return api.get(f"/v1/jobs/{job_id}").json()


def processes_of(job_id: str) -> list[int]:
    """Pids of the live processes whose command line names ``job_id`` (runner, torchrun, ranks)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            named = entry.name.isdigit() and job_id.encode() in (entry / "cmdline").read_bytes()
            if named and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # not a zombie
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def ranks_of(job_id: str) -> list[int]:
    """Pids of the job's ranks (started by torchrun as ``python -u -m worker.ranks JOB_ID ...``)."""
    return [pid for pid in processes_of(job_id)
            if b"worker.ranks" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:4]]


def no_process_left(job_id: str, within_s: float = 10) -> bool:
    deadline = time.monotonic() + within_s
    while processes_of(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_of(job_id) == []


def largest_worker(api) -> int | None:
    with api.app.state.services.sessions() as db:
        return db.scalar(select(func.max(WorkerSeen.capacity)))


def test_a_job_larger_than_every_worker_is_refused_at_submit(api, submit):
    detail = submit(expect=422, nproc=2)
    assert "nproc: 2 processes asked, but the largest worker runs 1" in detail


@pytest.fixture
def two_process_worker(api, workers, wait_for):
    """A worker started as ``mol worker --procs 2``, once the API can see its capacity."""
    workers.start(procs=2)
    wait_for(lambda: largest_worker(api) == 2, timeout=60, what="the worker of capacity 2 to be seen")


def test_a_two_process_job_records_from_rank_0_only_and_resumes_when_a_rank_is_killed(
        api, two_process_worker, submit, wait_for):
    assert "the largest worker runs 2" in submit(expect=422, nproc=3)
    job_id = submit(nproc=2, max_steps=12, eval_every=12, save_every=2, eval_data=None)  # still running at the kill
    wait_for(lambda: status(api, job_id)["step"] >= 3, what="job to reach step 3")
    rank = max(ranks_of(job_id))  # SIGKILL one rank: torchrun fails, the runner re-queues the job
    os.kill(rank, signal.SIGKILL)
    job = wait_for(lambda: (j := status(api, job_id))["status"] in ("succeeded", "failed") and j, what="job end")
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 2
    steps = [p["step"] for p in api.get(f"/v1/jobs/{job_id}/metrics").json() if "train/loss" in p]
    assert steps == list(range(1, 13))  # one point per step: rank 1 recorded nothing, the resume no duplicate
    kinds = [e["kind"] for e in api.get(f"/v1/jobs/{job_id}/events").json()]
    assert kinds.count("config") == 2 and kinds.count("requeued") == 1 and "resumed" in kinds
    usage = job["usage"]  # the steps redone after the resume count once; both attempts' time counts
    assert usage["tokens"] == job["last_metrics"]["train/tokens"] > 0 and usage["accelerator_seconds"] > 0
    assert no_process_left(job_id)


def test_cancel_ends_every_rank(api, two_process_worker, submit, wait_for):
    job_id = submit(nproc=2, max_steps=5000, save_every=1000, eval_every=1000, eval_data=None)
    wait_for(lambda: status(api, job_id)["step"] >= 1, what="job to reach step 1")
    assert len(ranks_of(job_id)) == 2
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "running"
    job = wait_for(lambda: (j := status(api, job_id))["status"] != "running" and j, timeout=15, what="cancel")
    assert job["status"] == "cancelled" and job["step"] < 5000
    assert no_process_left(job_id)


def test_a_version_3_database_gains_worker_capacity(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'mol.db'}")
    create_version_8_tables(engine)  # the models' newer tables and columns come from later revisions
    with engine.begin() as conn:  # the shape version 3 left behind, with a worker seen
        conn.execute(text("ALTER TABLE workers_seen DROP COLUMN capacity"))
        conn.execute(text("INSERT INTO workers_seen (name, last_seen) VALUES ('old', '2026-01-01 00:00:00')"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (3)"))
    sessions = init_db(engine)
    with sessions() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
        assert db.get(WorkerSeen, "old").capacity == 1
    engine.dispose()


def test_a_worker_s_gpus_set_its_capacity_and_the_queues_it_consumes(capsys):
    assert worker_env(gpus="0,1,3") == {"CUDA_VISIBLE_DEVICES": "0,1,3", "MOL_WORKER_CAPACITY": "3"}
    assert worker_env(procs=2) == {"MOL_WORKER_CAPACITY": "2"} and worker_env() == {"MOL_WORKER_CAPACITY": "1"}
    assert main(["worker", "--gpus", "0,0"]) == 2 and "--gpus" in capsys.readouterr().err
    queues = celery_app(Settings(worker_capacity=3)).conf.task_queues
    assert [q.name for q in queues] == ["mol-jobs", "mol-jobs-2", "mol-jobs-3", "mol-side"]
