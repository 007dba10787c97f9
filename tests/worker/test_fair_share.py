"""Fair share on real Redis and a real Celery worker (issue 24): owner a submits a burst of 50 jobs, then owners b
and c one each; with one worker, b's and c's jobs each wait for at most the one job of a's running when they
arrive, not for a's 49 others. Asserted from the jobs' start times; the waits are printed (-s shows them)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.worker.conftest import TOKEN

OWNERS = {"a": "tok-a", "b": "tok-b", "c": "tok-c"}
BURST = 50


@pytest.fixture
def service_env(service_env):
    tokens = ",".join([f"tester:{TOKEN}"] + [f"{owner}:{token}" for owner, token in OWNERS.items()])
    return service_env | {"MOL_TOKENS": tokens, "MOL_SCHEDULER_RETRY_S": "0.5"}


def _as(owner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OWNERS[owner]}"}


def _started(api, owner: str, job_id: str) -> datetime | None:
    started = api.get(f"/v1/jobs/{job_id}", headers=_as(owner)).json()["started_at"]
    return datetime.fromisoformat(started.replace("Z", "+00:00")) if started else None


def test_one_owners_burst_delays_anothers_single_job_by_at_most_one_job(api, workers, corpora, wait_for):
    specs = {}
    for owner in OWNERS:
        ids = {}
        for purpose in ("domain", "general"):
            with open(corpora[purpose], "rb") as handle:
                ids[purpose] = api.post("/v1/datasets", headers=_as(owner), data={"purpose": purpose},
                                        files={"file": ("x.jsonl", handle)}).json()["id"]
        specs[owner] = {"name": owner, "base_model": "tiny", "domain_data": [ids["domain"]],
                        "general_data": [ids["general"]], "seq_len": 32, "batch_size": 4, "max_steps": 1,
                        "eval_every": 1, "save_every": 1, "eval_batches": 1, "sample_prompts": []}

    def submit(owner: str) -> str:
        response = api.post("/v1/jobs", headers=_as(owner), json=specs[owner])
        assert response.status_code == 201, response.text
        return response.json()["id"]

    workers.start()
    burst = [submit("a") for _ in range(BURST)]
    wait_for(lambda: any(_started(api, "a", j) for j in burst[:2]), timeout=60, every=0.1, what="a's first job")
    submitted = datetime.now(UTC)
    single = {"b": submit("b"), "c": submit("c")}
    positions = {o: api.get(f"/v1/jobs/{j}", headers=_as(o)).json()["queue_position"] for o, j in single.items()}
    assert positions == {"b": 1, "c": 2}  # ahead of a's 49 others, whose owner runs a job now
    starts = {o: wait_for(lambda o=o, j=j: _started(api, o, j), timeout=60, every=0.1, what=f"{o}'s job")
              for o, j in single.items()}
    waits = {o: round((s - submitted).total_seconds(), 1) for o, s in starts.items()}
    for job_id in burst:  # the rest of a's burst is not needed: cancelled, the test ends here
        api.post(f"/v1/jobs/{job_id}/cancel", headers=_as("a"))
    a_starts = sorted(s for j in burst if (s := _started(api, "a", j)))
    assert len([s for s in a_starts if s < max(starts.values())]) == 1, (a_starts, starts)  # only the one running
    assert len(a_starts) <= 2
    first_a_run = (min(starts.values()) - a_starts[0]).total_seconds()
    print(f"\nfair share: b and c submitted behind {BURST} jobs of a started after waiting {waits} s (s from their "
          f"submit), behind a's one running job (it ran {first_a_run:.1f} s); a's jobs started: {len(a_starts)}")
