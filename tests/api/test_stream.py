"""The SSE fan-out (api/stream.py): a subscriber whose backlog ends before the shared tail's first read still gets
every row in between, once; and on PostgreSQL one job's events commit in seq order (api/db.py), so no stream
skips one."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

from sqlalchemy import select

from api.db import Job, MetricPoint, init_db, make_engine
from api.deps import Services
from api.stream import Batch, JobTail, _messages


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
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(tails=hub)), headers={})

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

    from api.db import Base, JobEvent

    engine = create_engine(postgres_url)
    Base.metadata.drop_all(engine)
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
