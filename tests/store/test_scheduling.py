"""The scheduler's order (store/scheduling.py): fair share across owners, then priority, then age; an owner at
their running limit waits; and each queued job's place and reason, read from the database in one pass."""

from datetime import UTC, datetime, timedelta

import pytest

from store.db import Job, init_db, make_engine, utcnow
from store.quotas import QuotaExceeded
from store.scheduling import Waiting, check_queued_quota, next_job, queue_order, queue_places, take_next
from store.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def jobs(owner: str, n: int, start: int = 0, priority: int = 0) -> list[Waiting]:
    return [Waiting(f"{owner}{i}", owner, 1, priority, T0 + timedelta(seconds=start + i)) for i in range(n)]


def ids(order) -> list[str]:
    return [placed.job.id for placed in order]


def test_a_burst_of_one_owner_takes_turns_with_the_others_single_jobs():
    """a submits 50 jobs, then b and c one each: b and c go before a's second, whatever a's age."""
    waiting = jobs("a", 50) + jobs("b", 1, start=100) + jobs("c", 1, start=101)
    order = queue_order(waiting, running={}, last_start={}, running_limit=lambda _: 100)
    assert ids(order)[:4] == ["a0", "b0", "c0", "a1"] and ids(order)[4:] == [f"a{i}" for i in range(2, 50)]
    assert [p.position for p in order] == list(range(1, 53))
    # a's first job is running (one worker): b and c first, then a
    order = queue_order(waiting[1:], running={"a": 1}, last_start={"a": T0}, running_limit=lambda _: 100)
    assert ids(order)[:3] == ["b0", "c0", "a1"]
    # it ended (none running): a was served last, so b and c still go first
    order = queue_order(waiting[1:], running={}, last_start={"a": T0 + timedelta(hours=1)},
                        running_limit=lambda _: 100)
    assert ids(order)[:3] == ["b0", "c0", "a1"]


def test_fewest_running_first_then_least_recently_served():
    waiting = jobs("a", 2) + jobs("b", 2, start=10)
    order = queue_order(waiting, running={"b": 2}, last_start={"b": T0}, running_limit=lambda _: 5)
    assert ids(order) == ["a0", "a1", "b0", "b1"]  # b runs two already: a gets two before b's next
    order = queue_order(waiting, running={}, last_start={"a": T0 + timedelta(minutes=5), "b": T0},
                        running_limit=lambda _: 5)
    assert ids(order) == ["b0", "a0", "b1", "a1"]


def test_priority_orders_an_owners_own_jobs_and_breaks_ties_between_owners():
    waiting = [*jobs("a", 2), Waiting("a_urgent", "a", 1, 5, T0 + timedelta(minutes=9))]
    assert ids(queue_order(waiting, {}, {}, lambda _: 5)) == ["a_urgent", "a0", "a1"]
    # two owners never served: the higher priority first; it buys no second turn
    waiting = jobs("a", 2) + jobs("b", 2, start=10, priority=3)
    assert ids(queue_order(waiting, {}, {}, lambda _: 5)) == ["b0", "a0", "b1", "a1"]


def test_an_owner_at_the_running_limit_waits_after_everyone_else():
    waiting = jobs("a", 2) + jobs("b", 1, start=10)
    order = queue_order(waiting, running={"a": 2}, last_start={}, running_limit=lambda o: 2 if o == "a" else 9)
    assert ids(order) == ["b0", "a0", "a1"] and [p.held for p in order] == [False, True, True]


def test_the_database_view_places_and_takes_jobs_in_that_order(tmp_path):
    settings = Settings(home=tmp_path, owner_running_jobs=1, owner_queued_jobs=3,
                        owner_limits={"b": {"running_jobs": 2}})
    sessions = init_db(make_engine(settings.db_url))
    now = utcnow()
    with sessions.begin() as db:
        db.add(Job(id="a_run", owner="a", name="x", spec={}, max_steps=1, status="running", started_at=now,
                   lease_owner="h:1", heartbeat_at=now))
        for i, (owner, spec) in enumerate([("a", {}), ("b", {"priority": 0}), ("b", {"priority": 2}),
                                           ("b", {"nproc": 2}), ("c", {"priority": 1})]):
            db.add(Job(id=f"j{i}_{owner}", owner=owner, name="x", spec=spec, max_steps=1,
                       created_at=now + timedelta(seconds=i)))
        db.add(Job(id="c_cancelling", owner="c", name="x", spec={}, max_steps=1, cancel_requested=True))
    with sessions() as db:
        places = queue_places(db, settings)
        assert next_job(db, settings, 1) == ("j2_b", 4)  # b and c never served, b's priority-2 job first
    assert {k: p.position for k, p in places.items()} == {"j2_b": 1, "j4_c": 2, "j1_b": 3, "j0_a": 4, "j3_b": 1}
    assert places["j0_a"].reason.startswith("owner limit: 1 of your jobs are running") and \
        "MOL_OWNER_RUNNING_JOBS = 1" in places["j0_a"].reason
    assert places["j4_c"].reason == "waiting for a free worker: 1 job ahead"
    assert places["j3_b"].reason == "waiting for a free worker with 2 processes: 0 jobs ahead"
    assert [take_next(sessions, settings, 1, f"h:{n}") for n in range(4)] == ["j2_b", "j4_c", "j1_b", None]
    with sessions() as db:
        assert next_job(db, settings, 1) == (None, 1)  # only a's job is left, and a runs its one
        with pytest.raises(QuotaExceeded, match=r"quota queued_jobs \(MOL_OWNER_QUEUED_JOBS"):
            check_queued_quota(db, settings, "b", adding=3)  # b has 1 queued (j3_b) and may have 3
        check_queued_quota(db, settings, "b", adding=2)
