"""GET /v1/vocabularies serves the words the other answers use, from the one place each is defined."""

from typing import get_args

from mol_engine.callbacks import EngineEventKind
from store.jobs import FINAL, STATUSES


def test_the_vocabularies_are_the_stores_and_the_engines(client, auth):
    words = client.get("/v1/vocabularies", headers=auth()).json()
    assert words["job_statuses"] == list(STATUSES) == ["queued", "running", "paused", "succeeded", "failed",
                                                       "cancelled"]
    assert words["final_statuses"] == list(FINAL) and words["active_statuses"] == ["queued", "running"]
    assert set(get_args(EngineEventKind)) < set(words["event_kinds"])
    assert {"requeued", "lease_lost", "interrupted", "failed"} < set(words["event_kinds"])
    assert client.get("/v1/vocabularies").status_code == 401


def test_the_status_filter_takes_exactly_the_stores_statuses(client, auth):
    assert client.get("/v1/jobs?status=stopped", headers=auth()).status_code == 422
    assert all(client.get(f"/v1/jobs?status={s}", headers=auth()).status_code == 200 for s in STATUSES)
