"""GET /v1/estimate: a run time from the owner's finished jobs of the same base model and shape (api/estimate.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.estimate import Timing, estimate_seconds, evaluations, job_timing, median_timing, saves
from mol_engine.spec import JobSpec
from store.db import Job, JobEvent, utcnow

SHAPE = {"base_model": "tiny", "method": "mol", "seq_len": 32, "batch_size": 4}


def test_the_estimate_is_setup_plus_steps_evaluations_and_saves():
    assert evaluations(400, 50) == 9  # step 0, 50, ..., 400
    assert evaluations(20, 5) == 5 and evaluations(7, 5) == 3  # 0, 5 and the last step, 7
    assert saves(400, 200) == 2 and saves(7, 5) == 2 and saves(3, 10) == 1  # every save_every and the last step
    timing = Timing(setup_s=10, step_s=0.5, eval_s=2, save_s=1)
    assert estimate_seconds(timing, 400, 50, 200) == 10 + 400 * 0.5 + 9 * 2 + 2 * 1
    assert estimate_seconds(timing, 800, 50, 200) == 10 + 800 * 0.5 + 17 * 2 + 4 * 1  # twice the steps


def test_a_jobs_timing_takes_its_evaluations_and_saves_out_of_its_steps():
    t0 = utcnow()
    # 10 s to load, then 100 s for 20 steps, 5 evaluations of 2 s and 2 saves of 1 s: 88 s of steps
    timing = job_timing(t0, t0 + timedelta(seconds=10), t0 + timedelta(seconds=110), 20, [2] * 5, [1, 1])
    assert timing == Timing(setup_s=10, step_s=pytest.approx(88 / 20), eval_s=2, save_s=1)
    assert job_timing(t0, t0, t0 + timedelta(seconds=5), 0, [1], [1]) is None  # no step ran
    three = [Timing(1, 0.1, 1, 1), Timing(3, 0.3, 3, 3), Timing(100, 9, 50, 50)]  # one outlier
    assert median_timing(three) == Timing(3, 0.3, 3, 3)


def finished_job(client, owner: str = "alice", load_s: float = 10, run_s: float = 100, steps: int = 20,
                 eval_s: float | None = 2, **spec) -> str:
    """A succeeded job of ``spec`` (defaults: :data:`SHAPE`) stored with the timeline a worker records: its config
    event ``load_s`` after its start, 5 evaluations of ``eval_s`` and 2 saves of 1 s, done ``run_s`` later."""
    spec = {"name": "done", **SHAPE, "max_steps": steps, "eval_every": 5, "save_every": 10} | spec
    started = utcnow() - timedelta(hours=1)
    config = started + timedelta(seconds=load_s)
    with client.app.state.services.sessions.begin() as db:
        job = Job(owner=owner, name="done", spec=spec, status="succeeded", step=steps, max_steps=steps,
                  started_at=started, finished_at=config + timedelta(seconds=run_s))
        db.add(job)
        db.flush()
        timed = {"seconds": eval_s} if eval_s is not None else {}
        db.add_all([JobEvent(job_id=job.id, step=0, kind="config", message="", data={}, created_at=config)]
                   + [JobEvent(job_id=job.id, step=5 * i, kind="eval", message="", data=timed) for i in range(5)]
                   + [JobEvent(job_id=job.id, step=10 * i, kind="checkpoint", message="", data={"seconds": 1.0})
                      for i in (1, 2)])
        return job.id


def test_an_estimate_comes_from_finished_jobs_of_the_same_model_and_shape(client, auth):
    query = SHAPE | {"max_steps": 400, "eval_every": 50, "save_every": 200}
    nothing = client.get("/v1/estimate", params=query, headers=auth())
    assert nothing.status_code == 200, nothing.text
    assert nothing.json()["seconds"] is None and nothing.json()["message"].startswith("no estimate yet")
    finished_job(client)  # 10 s to load, 4.4 s a step, 2 s an evaluation, 1 s a save
    finished_job(client, load_s=30, run_s=300)  # 14.4 s a step
    finished_job(client, load_s=20, run_s=200)  # 9.4 s a step: the medians are this job's
    finished_job(client, owner="bob", load_s=1, run_s=13)  # another owner's: not counted
    finished_job(client, seq_len=64, run_s=13)  # another shape: not counted
    finished_job(client, eval_s=None, run_s=13)  # recorded before evaluations were timed: not counted
    got = client.get("/v1/estimate", params=query, headers=auth()).json()
    assert got["based_on"] == 3 and (got["evaluations"], got["saves"]) == (9, 2)
    assert (got["setup_s"], got["eval_s"], got["save_s"]) == (20, 2, 1)
    assert got["step_s"] == pytest.approx((200 - 5 * 2 - 2 * 1) / 20)
    assert got["seconds"] == pytest.approx(20 + 400 * got["step_s"] + 9 * 2 + 2 * 1)
    assert got["message"].startswith("about 1 h") and "from 3 finished jobs of tiny" in got["message"]
    # the same model with another shape, or another model: nothing comparable ran
    for other in (query | {"batch_size": 8}, query | {"finetune": "lora"}, query | {"base_model": "demo"}):
        assert client.get("/v1/estimate", params=other, headers=auth()).json()["seconds"] is None, other
    bobs = client.get("/v1/estimate", params=query, headers=auth("bob")).json()  # his own job only
    assert bobs["based_on"] == 1 and bobs["setup_s"] == 1


def test_an_estimate_refuses_a_shape_no_job_could_have_naming_the_field(client, auth):
    for params, field in (({"seq_len": 4}, "seq_len"), ({"method": "sft"}, "method"), ({"max_steps": 0}, "max_steps"),
                          ({"eval_every": "x"}, "eval_every"), ({}, "base_model")):
        answer = client.get("/v1/estimate", params={"base_model": "tiny"} | params if params else {}, headers=auth())
        assert answer.status_code == 422 and field in answer.json()["detail"], (params, answer.text)
    assert client.get("/v1/estimate", params={"base_model": "tiny"}).status_code == 401


def test_the_query_takes_the_specs_defaults():
    from api.estimate import CADENCE, SHAPE, EstimateQuery

    defaults = EstimateQuery(base_model="m").model_dump()
    assert defaults == {name: JobSpec.model_fields[name].default for name in SHAPE + CADENCE} | {"base_model": "m"}
