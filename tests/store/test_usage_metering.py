"""Usage metering (store/usage.py): repeated heartbeats add nothing, a resume adds under its new attempt, tokens of
steps redone after a resume count once, and lease time splits at UTC midnight. The clock is injected."""

from datetime import UTC, date, datetime, timedelta

import pytest

from store.db import Dataset, Job, init_db, make_engine
from store.usage import (
    Attempt,
    LeaseMeter,
    accelerator_seconds_on,
    day_seconds,
    days_of,
    job_totals,
    record_lease_time,
    record_storage,
    record_tokens,
    storage_bytes,
)
from tests.empty_database import empty_database

T0 = datetime(2026, 12, 7, 23, 59, 0, tzinfo=UTC)  # a minute before midnight UTC
DAY1, DAY2 = date(2026, 12, 7), date(2026, 12, 8)


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, tmp_path):
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'mol.db'}")
    else:  # the upsert and the row lock take PostgreSQL's own path
        engine = make_engine(request.getfixturevalue("postgres_url"))
        empty_database(engine)
    sessions = init_db(engine)
    with sessions.begin() as db:
        db.add(Job(id="job_a", owner="alice", name="a", spec={"nproc": 2}, max_steps=10))
        db.add(Job(id="job_b", owner="bob", name="b", spec={}, max_steps=10))
    yield sessions
    engine.dispose()


def test_day_seconds_splits_at_utc_midnight():
    assert day_seconds(T0, T0 + timedelta(seconds=90)) == {DAY1: 60.0, DAY2: 30.0}
    assert day_seconds(T0, T0) == {} and day_seconds(T0, T0 - timedelta(seconds=1)) == {}


def test_repeated_heartbeats_add_nothing_and_a_resume_adds_under_its_attempt(sessions):
    now = [T0]
    meter = LeaseMeter(sessions, Attempt("job_a", "alice", 1, 2), T0 - timedelta(seconds=30), clock=lambda: now[0])
    meter.record()
    meter.record()  # the same heartbeat again (a retried write): no double count
    now[0] = T0 + timedelta(seconds=90)  # past midnight: the rest goes to the next day
    meter.record()
    meter.record()
    # an older moment written late (a slow thread) changes nothing either
    record_lease_time(sessions, meter.key, meter.started, T0)
    with sessions() as db:
        assert accelerator_seconds_on(db, "alice", DAY1) == pytest.approx(2 * 90)  # 2 processes x 90 s
        assert accelerator_seconds_on(db, "alice", DAY2) == pytest.approx(2 * 30)
    # the job resumes (attempt 2) after a crash: its time adds, redone steps included
    resumed = LeaseMeter(sessions, Attempt("job_a", "alice", 2, 2), T0 + timedelta(seconds=100),
                         clock=lambda: T0 + timedelta(seconds=110))
    resumed.record()
    with sessions() as db:
        assert accelerator_seconds_on(db, "alice", DAY2) == pytest.approx(2 * 40)
        assert job_totals(db, "job_a").accelerator_seconds == pytest.approx(2 * 130)
        assert accelerator_seconds_on(db, "bob", DAY2) == 0


def test_tokens_of_steps_redone_after_a_resume_count_once(sessions):
    first, second = Attempt("job_a", "alice", 1, 2), Attempt("job_a", "alice", 2, 2)
    with sessions.begin() as db:
        assert record_tokens(db, first, 100, now=T0) == 100
        assert record_tokens(db, first, 200, now=T0) == 100
        assert record_tokens(db, first, 200, now=T0) == 0  # the same point again
    with sessions.begin() as db:  # resumed from the checkpoint at 150 tokens, the next day
        assert record_tokens(db, second, 150, now=T0 + timedelta(minutes=5)) == 0
        assert record_tokens(db, second, 250, now=T0 + timedelta(minutes=5)) == 50
    with sessions() as db:
        rows = {day: (tokens, jobs) for day, tokens, _seconds, jobs in days_of(db, "alice", DAY1, DAY2)}
        assert rows == {DAY1: (200, 1), DAY2: (50, 1)}
        assert job_totals(db, "job_a").tokens == 250
        assert days_of(db, "bob", DAY1, DAY2) == []


def test_storage_sums_datasets_and_the_last_measure_of_each_run(sessions):
    with sessions.begin() as db:
        db.add(Dataset(owner="alice", purpose="domain", filename="d.jsonl", path="/x", bytes=1000, documents=1,
                       approx_tokens=1, sha256="0" * 64))
    record_storage(sessions, "job_a", "alice", 500)
    record_storage(sessions, "job_a", "alice", 700)  # measured again: replaces
    record_storage(sessions, "job_gone", "alice", 10**9)  # a deleted job: nothing
    with sessions() as db:
        assert storage_bytes(db, "alice") == (1000, 700) and storage_bytes(db, "bob") == (0, 0)
        assert job_totals(db, "job_a").storage_bytes == 700
