"""Job states that never lie: dead leases show without a worker, cancel ends unowned jobs at once, and a cancel
racing a worker's lease never leaves a job training under a ``cancelled`` label (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from datetime import timedelta
from importlib import import_module
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import sessionmaker

from api.app import create_app
from mol_engine.spec import JobSpec
from store import jobs as job_store
from store.db import Job, JobEvent, WorkerSeen, init_db, make_engine, utcnow
from store.jobs import acquire_lease, cancel_job, end_cancelled_run, finish, release_dead_leases, renew_lease, requeue
from store.settings import Settings
from tests.api.conftest import tiny_job_spec
from worker import runner
from worker.runner import DatabaseRecorder, run

HOUR_AGO = timedelta(hours=1)


@pytest.fixture
def sessions(settings):
    settings.home.mkdir(parents=True, exist_ok=True)
    return init_db(make_engine(settings.db_url))


@pytest.fixture
def add_job(sessions):
    """add_job(status="queued", lease_owner=None, beat_age=None) -> the id of a new job of alice's."""
    count = iter(range(1000))

    def add(status: str = "queued", lease_owner: str | None = None, beat_age: timedelta | None = None,
            **fields) -> str:
        job_id = f"job_state{next(count)}"
        with sessions.begin() as db:
            db.add(Job(id=job_id, owner="alice", name="s", spec={}, max_steps=10, status=status,
                       lease_owner=lease_owner, heartbeat_at=None if beat_age is None else utcnow() - beat_age,
                       **fields))
        return job_id

    return add


def state(sessions, job_id: str) -> tuple[str, bool, int]:
    with sessions() as db:
        job = db.get(Job, job_id)
        return job.status, job.cancel_requested, job.attempt


def events(sessions, job_id: str) -> list[tuple[str, str]]:
    with sessions() as db:
        return [(e.kind, e.message) for e in db.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]


def dead_local_owner() -> str:
    """A lease owner on this host whose process has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}"


def test_a_dead_lease_goes_back_to_queued_with_the_reason(sessions, add_job, settings):
    stale = add_job("running", "gone-host:7", HOUR_AGO)
    local = add_job("running", dead_local_owner(), timedelta(0))  # fresh heartbeat, but its process is gone
    alive = add_job("running", "other-host:9", timedelta(0))
    assert sorted(release_dead_leases(sessions, settings.lease_timeout_s)) == sorted([stale, local])
    assert state(sessions, stale)[0] == state(sessions, local)[0] == "queued"
    assert state(sessions, alive)[0] == "running"
    [(kind, message)] = events(sessions, stale)
    assert kind == "lease_lost" and message.startswith("lease lost: worker gone-host:7 stopped heartbeating at ")
    assert release_dead_leases(sessions, settings.lease_timeout_s) == {}  # once


def test_the_api_shows_a_dead_lease_within_its_sweep_with_no_worker(settings, sessions, add_job, auth):
    sent: list[str] = []
    app = create_app(settings.model_copy(update={"heartbeat_s": 0.1}), enqueue=sent.append)
    with TestClient(app) as client:
        job_id = add_job("running", "gone-host:7", HOUR_AGO)
        deadline = time.monotonic() + 5
        while client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["status"] == "running":
            assert time.monotonic() < deadline, "the sweeper did not release the dead lease"
            time.sleep(0.05)
        kinds = [e["kind"] for e in client.get(f"/v1/jobs/{job_id}/events", headers=auth()).json()]
        assert kinds == ["lease_lost"] and sent == [job_id]  # handed to the broker again, once


def test_a_requested_cancel_ends_a_job_whose_runner_died(sessions, add_job, settings):
    running = add_job("running", "gone-host:7", HOUR_AGO, cancel_requested=True)
    requeued = add_job("queued", cancel_requested=True)  # a worker's reconciler re-queued it
    # no worker takes a job whose cancel was asked
    assert not acquire_lease(sessions, running, "w:1", settings.lease_timeout_s)
    assert not acquire_lease(sessions, requeued, "w:1", settings.lease_timeout_s)
    assert sorted(release_dead_leases(sessions, settings.lease_timeout_s)) == sorted([running, requeued])
    assert state(sessions, running)[0] == state(sessions, requeued)[0] == "cancelled"


def test_cancel_ends_at_once_what_no_one_runs_and_asks_a_live_runner(client, auth, sessions, add_job):
    orphan = add_job("running", "gone-host:7", HOUR_AGO)
    live = add_job("running", "other-host:9", timedelta(0))
    assert client.post(f"/v1/jobs/{orphan}/cancel", headers=auth()).json()["status"] == "cancelled"
    [(kind, message)] = events(sessions, orphan)
    assert kind == "cancelled" and "lease lost: worker gone-host:7" in message
    answer = client.post(f"/v1/jobs/{live}/cancel", headers=auth()).json()
    assert answer["status"] == "running" and state(sessions, live)[1] is True
    again = client.post(f"/v1/jobs/{orphan}/cancel", headers=auth())
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_a_lease_after_a_cancel_is_refused(sessions, add_job, settings):
    job_id = add_job()
    assert cancel_job(sessions, job_id, settings.lease_timeout_s).status == "cancelled"
    assert not acquire_lease(sessions, job_id, "w:1", settings.lease_timeout_s)
    assert state(sessions, job_id) == ("cancelled", True, 0)


def test_a_cancel_after_a_lease_asks_the_runner_to_stop(sessions, add_job, settings):
    job_id = add_job()
    assert acquire_lease(sessions, job_id, "w:1", settings.lease_timeout_s)
    assert cancel_job(sessions, job_id, settings.lease_timeout_s).status == "running"
    assert state(sessions, job_id) == ("running", True, 1)  # the runner reads the flag after its next step


@pytest.mark.parametrize("before", ["queued", "dead lease"])
def test_a_lease_landing_between_cancels_read_and_write_wins_and_sees_the_cancel(sessions, add_job, settings,
                                                                                 monkeypatch, before):
    job_id = add_job() if before == "queued" else add_job("running", "gone-host:7", HOUR_AGO)
    read, leased = job_store.lease_view, []

    def read_then_lease(*args):
        seen = read(*args)
        if not leased:  # the worker's compare-and-set lands right after cancel read the job
            leased.append(acquire_lease(sessions, job_id, "w:1", settings.lease_timeout_s))
        return seen

    monkeypatch.setattr(job_store, "lease_view", read_then_lease)
    assert cancel_job(sessions, job_id, settings.lease_timeout_s).status == "running"
    assert leased == [True]
    assert state(sessions, job_id)[:2] == ("running", True)
    assert [kind for kind, _ in events(sessions, job_id)] == []  # no "cancelled" label on a running job


def test_cancel_racing_a_lease_in_threads_ends_one_of_the_two_true_ways(sessions, add_job, settings):
    for _ in range(15):
        job_id = add_job()
        start, leased = threading.Barrier(2), []

        def lease(job_id=job_id, start=start, leased=leased):
            start.wait()
            leased.append(acquire_lease(sessions, job_id, "w:1", settings.lease_timeout_s))

        racer = threading.Thread(target=lease)
        racer.start()
        start.wait()
        cancel_job(sessions, job_id, settings.lease_timeout_s)
        racer.join()
        status, requested, attempt = state(sessions, job_id)
        if leased == [True]:  # the worker won: it runs, and reads the cancel after its next step
            assert (status, requested, attempt) == ("running", True, 1)
        else:  # the cancel won: the job never started
            assert (status, requested, attempt) == ("cancelled", True, 0)


def test_health_is_degraded_while_jobs_wait_and_no_worker_is_seen(client, sessions, add_job, auth):
    assert client.get("/healthz", headers=auth()).json() | {"workers": []} == {
        "status": "ok", "reasons": [], "database": "ok", "broker": "ok", "workers": [], "jobs_waiting": 0}
    add_job()
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json()["status"] == "degraded"
    assert answer.json()["reasons"] == ["1 job(s) waiting and no worker seen in the last 120 s"]
    with sessions.begin() as db:
        db.add(WorkerSeen(name="host:1", last_seen=utcnow()))
    assert client.get("/healthz").json()["status"] == "ok"


def test_health_shows_workers_and_waiting_jobs_only_with_a_token(client, sessions, add_job, auth):
    add_job()
    with sessions.begin() as db:
        db.add(WorkerSeen(name="gpu-host-7:123", last_seen=utcnow()))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        public = client.get("/healthz", headers=headers)
        assert public.status_code == 200 and public.json() == {"status": "ok", "reasons": []}, public.text
    full = client.get("/healthz", headers=auth()).json()
    assert [w["name"] for w in full["workers"]] == ["gpu-host-7:123"] and full["jobs_waiting"] == 1
    assert full["database"] == full["broker"] == "ok"


def test_health_names_an_unreachable_broker_and_database(tmp_path):
    settings = Settings(home=tmp_path / "home", broker_url="redis://127.0.0.1:1/0", demo_model=False)
    with TestClient(create_app(settings, enqueue=lambda _id: None)) as client:
        answer = client.get("/healthz")
        assert answer.status_code == 200 and answer.json()["reasons"] == [
            "job queue unreachable (error: OperationalError)"]
        client.app.state.services.sessions = sessionmaker(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/x"))
        answer = client.get("/healthz")
        assert answer.status_code == 503 and answer.json()["status"] == "degraded"
        assert answer.json()["reasons"][0] == "database unreachable (error: OperationalError)"


def test_a_runner_whose_lease_was_taken_over_stops_and_leaves_the_job_to_its_new_holder(sessions, add_job,
                                                                                         settings):
    job_id = add_job()
    assert acquire_lease(sessions, job_id, "host:1", settings.lease_timeout_s)
    recorder = DatabaseRecorder(sessions, job_id, "host:1", None)
    assert not recorder.should_stop()
    # runner 1 stalled past the lease timeout: the job was re-queued and runner 2 took it
    with sessions.begin() as db:
        db.get(Job, job_id).status, db.get(Job, job_id).lease_owner = "queued", None
    assert acquire_lease(sessions, job_id, "host:2", settings.lease_timeout_s)
    assert recorder.should_stop() and recorder.lease_lost
    recorder.on_event({"step": 3, "kind": "cancelled", "message": "stopped at step 3 (checkpoints kept)"})  # engine's
    assert events(sessions, job_id) == [("interrupted", "interrupted: its lease was taken over (this runner stalled "
                                         "past the lease timeout); stopped at step 3 (checkpoints kept); the job "
                                         "resumes from its last checkpoint")]  # nobody cancelled it
    assert not finish(sessions, job_id, "cancelled", holder="host:1")  # its stop is not the job's end
    with sessions() as db:
        job = db.get(Job, job_id)
        assert (job.status, job.lease_owner) == ("running", "host:2")
    assert finish(sessions, job_id, "succeeded", holder="host:2")
    assert state(sessions, job_id)[0] == "succeeded"


def take_over(sessions, job_id: str, settings) -> None:
    """This runner stalled past the lease timeout: its job was released, and runner host:2 took it."""
    with sessions.begin() as db:
        db.execute(update(Job).where(Job.id == job_id).values(status="queued", lease_owner=None))
    assert acquire_lease(sessions, job_id, "host:2", settings.lease_timeout_s)


def assert_left_to_its_new_holder(sessions, job_id: str) -> None:
    with sessions() as db:
        job = db.get(Job, job_id)
        assert (job.status, job.lease_owner, job.error) == ("running", "host:2", None)
    assert [kind for kind, _ in events(sessions, job_id)] == []  # no "failed" event on the run that took over


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
@pytest.mark.parametrize("path", ["attempts used up", "spec no longer resolves", "training raised"])
def test_a_runner_taken_for_dead_does_not_fail_the_job_that_was_taken_over(path, sessions, add_job, settings,
                                                                              monkeypatch):
    job_id = add_job(attempt=settings.job_attempts if path == "attempts used up" else 0)

    def taken_over_during(outcome):
        """A step of the runner that returns or raises ``outcome`` (a function's answer, or an exception)
        while another runner takes the job over."""
        def step(*args, **_kwargs):
            answer = None if isinstance(outcome, Exception) else outcome(*args)
            take_over(sessions, job_id, settings)
            if isinstance(outcome, Exception):
                raise outcome
            return answer
        return step

    if path == "attempts used up":  # taken over between this runner's lease and its look at the attempts
        monkeypatch.setattr(runner, "acquire_lease", taken_over_during(acquire_lease))
    elif path == "spec no longer resolves":
        monkeypatch.setattr(runner, "resolve_spec", taken_over_during(ValueError("dataset 'd' no longer exists")))
    else:
        monkeypatch.setattr(runner, "resolve_spec", lambda *_args: JobSpec.model_construct(nproc=1))
        raised = RuntimeError("CUDA error: unspecified launch failure")
        monkeypatch.setattr(import_module("mol_engine.train"), "train", taken_over_during(raised))
    word = run(job_id, settings)
    assert_left_to_its_new_holder(sessions, job_id)
    assert word == "lease-lost"


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
@pytest.mark.parametrize("report", [{"status": "error", "error": "ValueError: bad batch"}, None],
                         ids=["a rank's own error", "ranks died, attempts used up"])
def test_a_multi_process_runner_taken_for_dead_does_not_fail_the_job_that_was_taken_over(report, sessions, add_job,
                                                                                          settings, monkeypatch):
    job_id = add_job(attempt=settings.job_attempts - 1)
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert acquire_lease(sessions, job_id, me, settings.lease_timeout_s)  # its last attempt
    with sessions() as db:
        job = db.get(Job, job_id)

    class Torchrun:
        """torchrun whose ranks fail (rank 0 writing ``report``) while the job is taken over by another runner."""

        def __init__(self, command: list[str], **_kwargs) -> None:
            take_over(sessions, job_id, settings)
            if report:
                Path(command[-1]).write_text(json.dumps(report))
            self.returncode = 1

        def poll(self) -> int:
            return self.returncode

    monkeypatch.setattr(runner.subprocess, "Popen", Torchrun)
    monkeypatch.setattr(runner.signal, "signal", lambda *_args: None)  # not this test process's SIGTERM
    word = runner._run_ranks(sessions, job, me, 2, settings)
    assert_left_to_its_new_holder(sessions, job_id)
    assert word == "lease-lost"


def test_a_zombie_runner_holds_no_lease():
    from store.leases import lease_is_dead

    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    stat = Path(f"/proc/{child.pid}/stat")
    while time.monotonic() < deadline and "Z" not in stat.read_text().rsplit(")", 1)[1][:3]:
        time.sleep(0.05)  # exited, not reaped yet: a zombie that kill(pid, 0) still finds
    owner = f"{socket.gethostname()}:{child.pid}"
    assert lease_is_dead(owner, utcnow(), lease_timeout_s=3600)
    child.wait()


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the run is the cost, not the database
def test_a_run_whose_worker_is_gone_is_interrupted_and_one_the_user_cancels_cancelled(client, auth, upload, settings,
                                                                                        sessions, monkeypatch):
    kinds = {}
    with monkeypatch.context() as patch:  # the worker that started the runner killed: the runner is orphaned
        patch.setattr(DatabaseRecorder, "orphaned", property(lambda _self: True))
        job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
        assert run(job_id, settings) == "orphaned" and state(sessions, job_id)[0] == "running"  # resumed elsewhere
        kinds["worker gone"] = [kind for kind, _ in events(sessions, job_id)]
    recorded = DatabaseRecorder.on_metrics

    def cancel_at_step_1(self, step, metrics) -> None:  # the user's cancel arrives at step 1
        recorded(self, step, metrics)
        with sessions.begin() as db:
            db.get(Job, self.job_id).cancel_requested = True

    monkeypatch.setattr(DatabaseRecorder, "on_metrics", cancel_at_step_1)
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload, max_steps=4)).json()["id"]
    assert run(job_id, settings) == "cancelled" and state(sessions, job_id)[0] == "cancelled"
    kinds["user cancel"] = [kind for kind, _ in events(sessions, job_id)]
    assert "interrupted" in kinds["worker gone"] and "cancelled" not in kinds["worker gone"], kinds
    assert "cancelled" in kinds["user cancel"] and "interrupted" not in kinds["user cancel"], kinds


def test_a_runner_changes_only_a_job_it_still_holds(sessions, add_job):
    """Every change a runner makes (renew, requeue, finish, the end of a cancelled run) is a compare-and-set on its
    holder: a runner taken for dead cannot overwrite the state of the one that took its job over."""
    job_id = add_job("running", "host:2", timedelta(0))
    assert not renew_lease(sessions, job_id, "host:1")
    assert not requeue(sessions, job_id, "host:1", "a rank died")
    assert not finish(sessions, job_id, "failed", "host:1", "RuntimeError")
    assert not end_cancelled_run(sessions, job_id, "host:1", grace_s=5)
    assert state(sessions, job_id) == ("running", False, 0)
    assert renew_lease(sessions, job_id, "host:2")
    assert requeue(sessions, job_id, "host:2", "a rank died")
    assert state(sessions, job_id) == ("queued", False, 0)
    with sessions() as db:
        assert [e.kind for e in db.scalars(select(JobEvent).where(JobEvent.job_id == job_id))] == ["requeued"]


def test_a_runner_that_outlives_the_cancel_grace_ends_cancelled_with_an_event(sessions, add_job):
    running = add_job("running", "host:1", timedelta(0))
    assert not end_cancelled_run(sessions, running, "host:1", grace_s=5)  # no cancel was asked: not the worker's call
    cancel_job(sessions, running, lease_timeout_s=60)
    assert end_cancelled_run(sessions, running, "host:1", grace_s=5)
    assert state(sessions, running)[:2] == ("cancelled", True)
    with sessions() as db:
        messages = [e.message for e in db.scalars(select(JobEvent).where(JobEvent.job_id == running))]
    assert messages == ["cancelled: the runner did not stop within 5 s and was ended"]
