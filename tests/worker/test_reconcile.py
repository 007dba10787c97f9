"""The reconciler: when the broker is down, the job it re-queues stays queued and a later pass sends it; a job
whose message waits in the broker is never sent again (the queue does not grow), and a Redis wipe loses none."""

import os
import socket
from datetime import timedelta

import redis
from sqlalchemy import Engine, event, select, update

from store.db import Job, JobEvent, init_db, make_engine, utcnow
from store.dispatch import job_sender
from store.settings import Settings
from worker import tasks
from worker.broker_queues import waiting_tokens


def test_a_refused_resend_keeps_the_job_queued_for_the_next_pass(tmp_path):
    settings = Settings(home=tmp_path, lease_timeout_s=60)
    sessions = init_db(make_engine(settings.db_url))
    with sessions.begin() as db:  # its worker died an hour ago
        db.add(Job(id="job_orphan", owner="a", name="a", spec={}, max_steps=1, status="running",
                   lease_owner="gone-host:1", heartbeat_at=utcnow() - timedelta(hours=1)))

    def broker_down(_job_id: str, nproc: int = 1) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    assert tasks.reconcile(settings, broker_down) == []  # refused, without ending the reconciler's thread
    with sessions() as db:
        assert db.get(Job, "job_orphan").status == "queued"
    sent: list[str] = []
    assert tasks.reconcile(settings, lambda job_id, nproc=1: sent.append(job_id)) == [] and sent == []
    with sessions.begin() as db:  # not re-sent before it has waited lease_timeout_s
        db.execute(update(Job).values(queued_at=utcnow() - timedelta(minutes=5)))
    assert tasks.reconcile(settings, lambda job_id, nproc=1: sent.append(job_id)) == ["job_orphan"]
    assert sent == ["job_orphan"]


def test_jobs_waiting_behind_a_long_one_are_sent_once_and_again_only_after_a_broker_wipe(tmp_path, service_env):
    broker = redis.Redis.from_url(service_env["MOL_BROKER_URL"])  # flushed by service_env
    settings = Settings(home=tmp_path, broker_url=service_env["MOL_BROKER_URL"], lease_timeout_s=60)
    sessions = init_db(make_engine(settings.db_url))
    enqueue = job_sender(settings)  # the API's: real messages in Redis
    waiting = {"job_a": 1, "job_b": 1, "job_c": 2}
    with sessions.begin() as db:  # a long job runs (its runner is this live process) while three wait
        db.add(Job(id="job_long", owner="a", name="a", spec={}, max_steps=1, status="running",
                   lease_owner=f"{socket.gethostname()}:{os.getpid()}", heartbeat_at=utcnow()))
        for job_id, nproc in waiting.items():
            db.add(Job(id=job_id, owner="a", name="a", spec={"nproc": nproc}, max_steps=1))
    for job_id, nproc in waiting.items():
        enqueue(job_id, nproc=nproc)

    def queued() -> tuple[int, int]:
        return broker.llen("mol-jobs"), broker.llen("mol-jobs-2")

    for _ in range(3):  # each pass after they have waited longer than the lease timeout
        with sessions.begin() as db:
            db.execute(update(Job).where(Job.status == "queued").values(queued_at=utcnow() - timedelta(minutes=5)))
        assert tasks.reconcile(settings, enqueue) == []
        assert queued() == (2, 1)  # not 3 -> 6 -> 9
    broker.flushdb()  # Redis restarted empty: every waiting job is sent again, once
    with sessions.begin() as db:
        db.execute(update(Job).where(Job.status == "queued").values(queued_at=utcnow() - timedelta(minutes=5)))
    assert sorted(tasks.reconcile(settings, enqueue)) == ["job_a", "job_b", "job_c"]
    assert queued() == (2, 1)
    with sessions.begin() as db:
        db.execute(update(Job).where(Job.status == "queued").values(queued_at=utcnow() - timedelta(minutes=5)))
    assert tasks.reconcile(settings, enqueue) == [] and queued() == (2, 1)


def test_the_filesystem_broker_is_read_too(tmp_path):
    settings = Settings(home=tmp_path, lease_timeout_s=60)
    sessions = init_db(make_engine(settings.db_url))
    with sessions.begin() as db:
        db.add(Job(id="job_fs", owner="a", name="a", spec={}, max_steps=1,
                   queued_at=utcnow() - timedelta(minutes=5)))
    job_sender(settings)("job_fs")
    assert tasks.reconcile(settings, job_sender(settings)) == []
    assert len(list((settings.broker_dir / "out").glob("*.msg"))) == 1


def test_a_stale_delivery_is_skipped_without_starting_a_process(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path, lease_timeout_s=60)
    sessions = init_db(make_engine(settings.db_url))
    with sessions.begin() as db:
        db.add(Job(id="job_done", owner="a", name="a", spec={}, max_steps=1, status="succeeded"))
        db.add(Job(id="job_held", owner="a", name="a", spec={}, max_steps=1, status="running",
                   lease_owner=f"{socket.gethostname()}:{os.getpid()}", heartbeat_at=utcnow()))

    def no_process(*_args, **_kwargs):
        raise AssertionError("a stale delivery started a process")

    monkeypatch.setattr(tasks, "_settings", lambda: settings)
    monkeypatch.setattr(tasks.subprocess, "Popen", no_process)
    assert [tasks.run_job(job_id) for job_id in ("job_done", "job_held", "job_gone")] == ["skipped"] * 3


def test_a_job_released_from_a_dead_lease_is_sent_at_once(tmp_path):
    settings = Settings(home=tmp_path, lease_timeout_s=60)
    sessions = init_db(make_engine(settings.db_url))
    with sessions.begin() as db:  # the API's sweeper put it back in the queue: it ran once, its message is gone
        db.add(Job(id="job_released", owner="a", name="a", spec={}, max_steps=1, attempt=1))
        db.add(Job(id="job_new", owner="a", name="a", spec={}, max_steps=1))  # its message may be on its way
    sent: list[str] = []
    assert tasks.reconcile(settings, lambda job_id, nproc=1: sent.append(job_id)) == ["job_released"] == sent


def test_the_reconciler_releases_a_dead_lease_as_the_api_does(tmp_path):
    """One transition (store.jobs.release_dead_leases): a pending cancel ends the job, a re-queue says why in a
    ``lease_lost`` event, and a heartbeat that lands between the reconciler's read and its write keeps the job."""
    settings = Settings(home=tmp_path, lease_timeout_s=60)
    sessions = init_db(make_engine(settings.db_url))
    hour_ago = utcnow() - timedelta(hours=1)
    with sessions.begin() as db:  # three runners that stopped heartbeating an hour ago
        for job_id, cancel in (("job_cancelled", True), ("job_lost", False), ("job_beats", False)):
            db.add(Job(id=job_id, owner="a", name="a", spec={}, max_steps=1, status="running", attempt=1,
                       lease_owner=f"host:{job_id}", heartbeat_at=hour_ago, cancel_requested=cancel))
    beaten: list[str] = []

    def beat_before_the_update(_conn, _cursor, statement, params, _context, _many) -> None:
        """job_beats's runner renews its lease just after the reconciler read it, before it writes."""
        if statement.startswith("UPDATE jobs") and not beaten:
            beaten.append("job_beats")
            with sessions.begin() as db:
                db.execute(update(Job).where(Job.id == "job_beats").values(heartbeat_at=utcnow()))

    event.listen(Engine, "before_cursor_execute", beat_before_the_update)
    try:
        sent: list[str] = []
        tasks.reconcile(settings, lambda job_id, nproc=1: sent.append(job_id))
    finally:
        event.remove(Engine, "before_cursor_execute", beat_before_the_update)
    with sessions() as db:
        status = {job.id: (job.status, job.lease_owner) for job in db.scalars(select(Job))}
        kinds = {job_id: [e.kind for e in db.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
                 for job_id in status}
    assert beaten == ["job_beats"]
    assert status == {"job_cancelled": ("cancelled", None), "job_lost": ("queued", None),
                      "job_beats": ("running", "host:job_beats")}, status
    assert kinds == {"job_cancelled": ["cancelled"], "job_lost": ["lease_lost"], "job_beats": []}, kinds
    assert sent == ["job_lost"]  # a cancelled job is not handed to the broker


def test_a_token_that_finds_only_jobs_of_owners_at_their_running_limit_goes_back_to_the_queue(tmp_path, monkeypatch):
    """Owner a runs 1 job, their limit: the token of a's next job starts no process, and is sent again (the job
    still needs it); a token with no queued job left is dropped."""
    settings = Settings(home=tmp_path, lease_timeout_s=60, owner_running_jobs=1, scheduler_retry_s=0.01)
    sessions = init_db(make_engine(settings.db_url))
    with sessions.begin() as db:
        db.add(Job(id="job_runs", owner="a", name="a", spec={}, max_steps=1, status="running", started_at=utcnow(),
                   lease_owner=f"{socket.gethostname()}:{os.getpid()}", heartbeat_at=utcnow()))
        db.add(Job(id="job_held", owner="a", name="a", spec={}, max_steps=1))

    def no_process(*_args, **_kwargs):
        raise AssertionError("a token for a held job started a process")

    monkeypatch.setattr(tasks, "_settings", lambda: settings)
    monkeypatch.setattr(tasks.subprocess, "Popen", no_process)
    assert tasks.run_job("job_held") == "waiting"
    assert waiting_tokens(settings) == {1: 1}
    with sessions.begin() as db:
        db.execute(update(Job).where(Job.id == "job_held").values(status="cancelled"))
    assert tasks.run_job("job_held") == "skipped"
