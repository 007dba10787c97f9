"""The SSE fan-out (api/stream.py): a subscriber whose backlog ends before the shared tail's first read still gets
every row in between, once; and on PostgreSQL one job's events commit in seq order (store/db.py), so no stream
skips one."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from api.deps import Services
from api.stream import Batch, JobTail, _messages
from store.db import Job, MetricPoint, init_db, make_engine
from tests.empty_database import empty_database


def test_rows_between_a_backlog_and_the_tails_start_are_sent_once(settings):
    settings.home.mkdir(parents=True, exist_ok=True)
    sessions = init_db(make_engine(settings.db_url))
    svc = Services(settings=settings, sessions=sessions, enqueue=lambda *_: None)
    with sessions.begin() as db:
        db.add(Job(id="job_tail", owner="alice", name="t", spec={}, max_steps=9, status="running"))

    def add_points(*steps: int) -> list[int]:
        with sessions.begin() as db:
            rows = [MetricPoint(job_id="job_tail", step=s, values={"train/loss": 1.0}) for s in steps]
            db.add_all(rows)
        return [r.seq for r in rows]

    add_points(1, 2)
    hub: dict[str, JobTail] = {}
    tail = hub["job_tail"] = JobTail(svc, "job_tail", hub)
    tail.task = SimpleNamespace()  # a tail already running: this test feeds its batches by hand
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(tails=hub)), headers={}, cookies={})

    async def read() -> list[int]:
        stream, steps = _messages(request, svc, "job_tail", ("metric",)), []
        steps += [(await anext(stream))["data"] for _ in range(2)]  # the backlog: steps 1 and 2
        seqs = add_points(3, 4, 5)  # land while the tail reads from where it started: after step 4
        queue = next(iter(tail.queues))
        queue.put_nowait(Batch("running", [{"seq": seqs[2], "step": 5, "train/loss": 1.0}], [], seqs[1], 0))
        steps += [(await anext(stream))["data"] for _ in range(3)]
        with sessions.begin() as db:
            db.get(Job, "job_tail").status = "succeeded"
        queue.put_nowait(Batch("succeeded", [], [], seqs[2], 0))
        end = await anext(stream)
        assert end["event"] == "end"
        return [json.loads(data)["step"] for data in steps]

    assert asyncio.run(read()) == [1, 2, 3, 4, 5]  # not [1, 2, 5]: steps 3 and 4 were read from the database


def test_on_postgresql_events_of_one_job_commit_in_seq_order(postgres_url):
    """A second writer's event of the same job waits for the first writer's commit, so it gets the later seq and
    commits later: a stream never sees seq N+1 before seq N of one job."""
    from sqlalchemy import create_engine

    from store.db import JobEvent

    engine = create_engine(postgres_url)
    empty_database(engine)
    sessions = init_db(engine)
    with sessions.begin() as db:
        db.add(Job(id="job_order", owner="alice", name="o", spec={}, max_steps=9, status="running"))
    first = sessions()
    first.begin()
    first.add(JobEvent(job_id="job_order", step=1, kind="checkpoint", message="runner", data={}))
    first.flush()  # seq taken, not committed: the runner is mid-transaction
    second_done = threading.Event()
    seqs = {}

    def second_writer() -> None:  # the API's cancel, at the same moment
        with sessions.begin() as db:
            row = JobEvent(job_id="job_order", step=1, kind="cancel", message="api", data={})
            db.add(row)
            db.flush()
            seqs["second"] = row.seq
        second_done.set()

    writer = threading.Thread(target=second_writer)
    writer.start()
    try:
        assert not second_done.wait(0.5)  # it waits for the first transaction to end
        seqs["first"] = first.scalars(select(JobEvent.seq).where(JobEvent.message == "runner")).one()
        first.commit()
        assert second_done.wait(10)
    finally:
        first.close()
        writer.join(10)
        engine.dispose()
    assert seqs["second"] > seqs["first"]


def _running_job(settings, job_id: str):
    """(services, add_points) for a running job of alice's in a fresh database of ``settings``."""
    settings.home.mkdir(parents=True, exist_ok=True)
    sessions = init_db(make_engine(settings.db_url))
    svc = Services(settings=settings, sessions=sessions, enqueue=lambda *_: None)
    with sessions.begin() as db:
        db.add(Job(id=job_id, owner="alice", name="t", spec={}, max_steps=9, status="running"))

    def add_points(*steps: int, status: str | None = None) -> None:
        with sessions.begin() as db:
            db.add_all([MetricPoint(job_id=job_id, step=s, values={"train/loss": 1.0}) for s in steps])
            if status:
                db.get(Job, job_id).status = status

    return svc, add_points


def _subscriber(svc):
    """A stream request of alice's on a fresh hub of tails: (request, hub)."""
    hub: dict[str, JobTail] = {}
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(tails=hub)),
                              headers={"authorization": "Bearer tok-alice"}, cookies={})
    return request, hub


def _failing_reads(monkeypatch) -> dict:
    """Makes api.stream's reads raise OperationalError (a dropped connection) while ``state["fail"]`` is above 0
    (each failure counts it down; -1: fail until set otherwise); returns ``state`` (with the failures counted)."""
    from sqlalchemy.exc import OperationalError

    from api import stream

    state, real = {"fail": 0, "failed": 0}, stream.read_since

    def read_since(*args, **kwargs):
        if state["fail"]:
            state["fail"] -= state["fail"] > 0
            state["failed"] += 1
            raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "read_since", read_since)
    return state


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_database_blip_delays_a_stream_and_loses_nothing(settings, monkeypatch):
    svc, add_points = _running_job(settings, "job_blip")
    add_points(1, 2)
    reads = _failing_reads(monkeypatch)
    request, hub = _subscriber(svc)

    async def read() -> list[dict]:
        stream = _messages(request, svc, "job_blip", ("metric",))
        got = [await anext(stream) for _ in range(2)]  # the backlog
        reads["fail"] = 4  # the tail's next reads fail: the connection dropped, then the database is back
        add_points(3, 4, 5, status="succeeded")
        async for message in stream:
            got.append(message)
        return got

    got = asyncio.run(asyncio.wait_for(read(), 15))  # before the fix: the tail died, the stream waited forever
    assert reads["failed"] == 4
    assert [m["event"] for m in got] == ["metric"] * 5 + ["end"]
    assert [json.loads(m["data"])["step"] for m in got[:5]] == [1, 2, 3, 4, 5]
    assert json.loads(got[-1]["data"]) == {"status": "succeeded"} and hub == {}


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_tail_that_starts_past_the_backlog_still_ends_the_stream(settings, monkeypatch):
    """The tail reads its starting position after the job wrote its last rows and ended (a busy machine: its first
    read ran late): it sends nothing but the job's end, the stream reads the rows between itself, then ends (it
    waited for a tail that had already ended: a CI run's database-blip test hung so)."""
    from api import stream

    svc, add_points = _running_job(settings, "job_late")
    add_points(1, 2)
    gate, real = threading.Event(), stream._positions

    def late_positions(*args):
        gate.wait(5)
        return real(*args)

    monkeypatch.setattr(stream, "_positions", late_positions)
    request, hub = _subscriber(svc)

    async def read() -> list[dict]:
        messages = _messages(request, svc, "job_late", ("metric",))
        got = [await anext(messages) for _ in range(2)]
        add_points(3, 4, 5, status="succeeded")
        gate.set()
        async for message in messages:
            got.append(message)
        return got

    got = asyncio.run(asyncio.wait_for(read(), 10))
    assert [m["event"] for m in got] == ["metric"] * 5 + ["end"]
    assert [json.loads(m["data"])["step"] for m in got[:5]] == [1, 2, 3, 4, 5] and hub == {}


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_long_database_outage_ends_the_stream_with_an_error_event(settings, monkeypatch):
    settings = settings.model_copy(update={"stream_db_outage_s": 0.5})
    svc, add_points = _running_job(settings, "job_outage")
    add_points(1)
    reads = _failing_reads(monkeypatch)
    request, hub = _subscriber(svc)

    async def read() -> tuple[list[dict], float]:
        stream = _messages(request, svc, "job_outage", ("metric",))
        got = [await anext(stream)]
        reads["fail"] = -1  # down for good
        started = time.monotonic()
        async for message in stream:
            got.append(message)
        return got, time.monotonic() - started

    got, took = asyncio.run(asyncio.wait_for(read(), 15))  # before the fix: silence (keep-alives) forever
    assert [m["event"] for m in got] == ["metric", "error"] and "id" not in got[-1]  # Last-Event-ID stays put
    assert json.loads(got[-1]["data"])["detail"] == (
        "the database was unreachable for 0.5 s: reconnect with Last-Event-ID to resume")
    assert 0.5 <= took < 5 and hub == {}


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_revoking_the_token_ends_its_open_stream_with_an_error_event(settings):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth import create_token, revoke_tokens

    settings = settings.model_copy(update={"token_recheck_s": 0.3, "stream_keepalive_s": 1})
    app = create_app(settings, enqueue=lambda _job_id: None)
    sessions = app.state.services.sessions
    with sessions.begin() as db:
        token = create_token(db, "carol")
        db.add(Job(id="job_watched", owner="carol", name="t", spec={}, max_steps=9, status="running"))

    def later(seconds: float, work) -> threading.Timer:
        timer = threading.Timer(seconds, work)
        timer.start()
        return timer

    def revoke() -> None:  # what `mol token revoke carol` does
        with sessions.begin() as db:
            revoke_tokens(db, "carol")

    def end_job() -> None:  # only so that the test ends where the stream would not
        with sessions.begin() as db:
            db.get(Job, "job_watched").status = "cancelled"

    with TestClient(app) as client:
        timers = [later(0.5, revoke), later(10, end_job)]
        started = time.monotonic()
        body = client.get("/v1/jobs/job_watched/events", headers={"Authorization": f"Bearer {token}",
                                                                   "Accept": "text/event-stream"}).text
        took = time.monotonic() - started
        for timer in timers:
            timer.cancel()
    assert "event: end" not in body and "event: error" in body, body
    assert '"detail": "the token of this stream was revoked"' in body and took < 5
