"""The reconciler when the broker is down: the job it re-queues stays queued, and a later pass sends it."""

from datetime import timedelta

from sqlalchemy import update

from api.db import Job, init_db, make_engine, utcnow
from api.settings import Settings
from worker import tasks


def test_a_refused_resend_keeps_the_job_queued_for_the_next_pass(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path, lease_timeout_s=60)
    sessions = init_db(make_engine(settings.db_url))
    with sessions.begin() as db:  # its worker died an hour ago
        db.add(Job(id="job_orphan", owner="a", name="a", spec={}, max_steps=1, status="running",
                   lease_owner="gone-host:1", heartbeat_at=utcnow() - timedelta(hours=1)))

    def broker_down(_job_id: str) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.run_job, "delay", broker_down)
    assert tasks.reconcile(settings) == []  # refused, without ending the reconciler's thread
    with sessions() as db:
        assert db.get(Job, "job_orphan").status == "queued"
    sent: list[str] = []
    monkeypatch.setattr(tasks.run_job, "delay", sent.append)
    assert tasks.reconcile(settings) == [] and sent == []  # not re-sent before it has waited lease_timeout_s
    with sessions.begin() as db:
        db.execute(update(Job).values(queued_at=utcnow() - timedelta(minutes=5)))
    assert tasks.reconcile(settings) == ["job_orphan"] and sent == ["job_orphan"]
