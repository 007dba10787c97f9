"""Pause and resume in the job state machine (store/jobs.py) and its routes: a queued job pauses at once, a running
one is asked (its runner saves a checkpoint at its next step), a worker killed while pausing leaves the job paused
at its last complete checkpoint, a resume queues it again, and every change carries its event and webhook
(SQLite and PostgreSQL). The exact continuation of the curve: tests/engine/test_train.py and tests/worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from store import jobs as job_store
from store.db import Job, WebhookDelivery, WebhookEndpoint
from store.jobs import acquire_lease, end_paused_run, pause_job, release_dead_leases, resume_job
from tests.api.test_job_states import HOUR_AGO, add_job, events, sessions, state  # noqa: F401  (fixtures)
from worker.runner import DatabaseRecorder


def webhooks(sessions, job_id: str) -> list[str]:  # noqa: F811
    with sessions() as db:
        return [d.event_type for d in db.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
                                                 .order_by(WebhookDelivery.created_at))]


def pausing(sessions, job_id: str) -> bool:  # noqa: F811
    with sessions() as db:
        return db.get(Job, job_id).pause_requested


def test_a_queued_job_pauses_at_once_and_resumes_to_the_queue_with_events_and_webhooks(sessions, add_job,  # noqa: F811
                                                                                     settings):
    with sessions.begin() as db:
        db.add(WebhookEndpoint(owner="alice", url="https://example.com/h", events=[], secret="whsec_x"))
    job_id = add_job()
    assert pause_job(sessions, job_id, settings.lease_timeout_s).status == "paused"
    assert pause_job(sessions, job_id, settings.lease_timeout_s).status == "paused"  # idempotent: no second event
    assert not acquire_lease(sessions, job_id, "w:1", settings.lease_timeout_s)  # a stale message finds it paused
    job, requeued = resume_job(sessions, job_id)
    assert (job.status, requeued, job.pause_requested) == ("queued", True, False)
    job, requeued = resume_job(sessions, job_id)  # already queued: unchanged, not sent again
    assert (job.status, requeued) == ("queued", False)
    assert [kind for kind, _ in events(sessions, job_id)] == ["paused", "resumed"]
    assert webhooks(sessions, job_id) == ["job.paused", "job.resumed"]
    assert acquire_lease(sessions, job_id, "w:1", settings.lease_timeout_s)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # sequential: one database shows it
def test_a_running_job_is_asked_to_pause_and_a_resume_before_it_does_withdraws_the_ask(sessions, add_job,  # noqa: F811
                                                                                       settings):
    job_id = add_job("running", "other-host:9", timedelta(0))
    assert pause_job(sessions, job_id, settings.lease_timeout_s).status == "running" and pausing(sessions, job_id)
    recorder = DatabaseRecorder(sessions, job_id, "other-host:9", None)
    assert not recorder.should_stop() and recorder.should_pause()  # one read after a step answers both
    job, requeued = resume_job(sessions, job_id)
    assert (job.status, requeued) == ("running", False) and not pausing(sessions, job_id)
    assert not recorder.should_stop() and not recorder.should_pause()
    job_store.cancel_job(sessions, job_id, settings.lease_timeout_s)
    with pytest.raises(job_store.PauseRefused, match="being cancelled"):  # a cancel wins
        pause_job(sessions, job_id, settings.lease_timeout_s)


def test_a_worker_killed_while_pausing_leaves_the_job_paused_at_its_last_checkpoint(sessions, add_job,  # noqa: F811
                                                                                   settings):
    dead = add_job("running", "gone-host:7", HOUR_AGO, pause_requested=True, step=7)
    both = add_job("running", "gone-host:8", HOUR_AGO, pause_requested=True, cancel_requested=True)
    orphan = add_job("running", "gone-host:9", HOUR_AGO)  # no one runs it: a pause ends it at once
    assert not acquire_lease(sessions, dead, "w:1", settings.lease_timeout_s)  # no new runner for a pausing job
    assert release_dead_leases(sessions, settings.lease_timeout_s) == {dead: "paused", both: "cancelled",
                                                                      orphan: "queued"}
    assert state(sessions, dead)[0] == "paused" and not pausing(sessions, dead)
    [(kind, message)] = events(sessions, dead)
    assert kind == "paused" and "its worker stopped while pausing" in message and "last complete checkpoint" in message
    with sessions() as db:
        assert db.get(Job, dead).step == 7  # the resumed run rewinds the points past its checkpoint (on_rewind)
    running = add_job("running", "gone-host:10", HOUR_AGO)
    assert pause_job(sessions, running, settings.lease_timeout_s).status == "paused"
    assert "no worker was running it" in events(sessions, running)[0][1]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # sequential: one database shows it
def test_a_run_that_paused_ends_as_its_owner_asked_last(sessions, add_job, settings):  # noqa: F811
    asked = add_job("running", "host:1", timedelta(0), pause_requested=True, attempt=1)
    withdrawn = add_job("running", "host:1", timedelta(0), attempt=1)  # resumed while the run saved its checkpoint
    cancelled = add_job("running", "host:1", timedelta(0), pause_requested=True, cancel_requested=True)
    assert end_paused_run(sessions, asked, "host:2") is None  # not its holder
    assert [end_paused_run(sessions, j, "host:1") for j in (asked, withdrawn, cancelled)] == [
        "paused", "requeued", "cancelled"]
    assert [state(sessions, j)[0] for j in (asked, withdrawn, cancelled)] == ["paused", "queued", "cancelled"]
    assert state(sessions, asked)[2] == state(sessions, withdrawn)[2] == 0  # a pause is no crashed attempt
    with sessions() as db:
        assert db.get(Job, asked).lease_owner is None and not db.get(Job, asked).pause_requested


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # sequential: one database shows it
def test_ended_jobs_refuse_pause_and_resume_and_a_paused_one_cancels_or_deletes(sessions, add_job,  # noqa: F811
                                                                                settings):
    ended = add_job("succeeded")
    with pytest.raises(job_store.JobEnded, match="succeeded"):
        pause_job(sessions, ended, settings.lease_timeout_s)
    with pytest.raises(job_store.JobEnded, match="succeeded"):
        resume_job(sessions, ended)
    to_cancel, to_delete = add_job("paused"), add_job("paused")
    assert job_store.cancel_job(sessions, to_cancel, settings.lease_timeout_s).status == "cancelled"
    assert events(sessions, to_cancel) == [("cancelled", "cancelled while paused; checkpoints kept")]
    job_store.delete_job(sessions, to_delete)  # no worker writes to a paused job
    with pytest.raises(job_store.JobActive):
        job_store.delete_job(sessions, add_job("running", "host:1", timedelta(0)))


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the routes, not the database
def test_pause_and_resume_routes_answer_the_job_or_a_409_naming_its_status(client, auth, add_job,  # noqa: F811
                                                                           queued):
    job_id, ended = add_job(), add_job("cancelled")
    paused = client.post(f"/v1/jobs/{job_id}/pause", headers=auth())
    assert paused.status_code == 200 and paused.json()["status"] == "paused" and queued == []
    resumed = client.post(f"/v1/jobs/{job_id}/resume", headers=auth())
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued" and queued == [job_id]  # sent
    # the whole job, as GET answers it: a page that redraws from the answer keeps its place in line and usage
    assert resumed.json()["queue_position"] == 1 and resumed.json()["usage"] == paused.json()["usage"] is not None
    for action in ("pause", "resume"):
        answer = client.post(f"/v1/jobs/{ended}/{action}", headers=auth())
        assert answer.status_code == 409 and "already ended (cancelled)" in answer.json()["detail"]
        assert client.post(f"/v1/jobs/{job_id}/{action}", headers=auth("bob")).status_code == 404
    words = client.get("/v1/vocabularies", headers=auth()).json()
    assert "paused" in words["job_statuses"] and "paused" not in words["active_statuses"] + words["final_statuses"]
    client.post(f"/v1/jobs/{job_id}/pause", headers=auth())
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 204
