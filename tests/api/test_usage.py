"""GET /v1/usage (the caller's own figures by UTC day; a bad range is a 422 naming the field), a job's usage in
GET /v1/jobs/{id}, and the usage quotas: 429 at submit past today's accelerator-hours or the storage, and at
upload past the storage."""

from datetime import timedelta

from store.db import UsageRecord, utcnow
from tests.api.conftest import ARITHMETIC, tiny_job_spec


def add_usage(client, owner: str, job_id: str, days_ago: int = 0, seconds: float = 0.0, tokens: int = 0,
              processes: int = 1) -> None:
    with client.app.state.services.sessions.begin() as db:
        db.add(UsageRecord(job_id=job_id, attempt=1, day=utcnow().date() - timedelta(days=days_ago), owner=owner,
                           processes=processes, seconds=seconds, tokens=tokens))


def limit(client, owner: str, **limits) -> None:
    svc = client.app.state.services
    svc.settings = svc.settings.model_copy(update={"owner_limits": {owner: limits}})


def test_usage_by_day_is_the_callers_own_with_limits_and_storage(client, auth, upload):
    upload(ARITHMETIC)
    add_usage(client, "alice", "job_x", days_ago=1, seconds=1800, tokens=100, processes=2)
    add_usage(client, "alice", "job_y", days_ago=0, seconds=360, tokens=5)
    add_usage(client, "bob", "job_z", days_ago=0, seconds=7200, tokens=999)
    body = client.get("/v1/usage", headers=auth()).json()
    assert [(d["tokens"], d["accelerator_seconds"], d["accelerator_hours"], d["jobs"]) for d in body["days"]] == [
        (100, 3600.0, 1.0, 1), (5, 360.0, 0.1, 1)]
    assert (body["tokens"], body["accelerator_hours"]) == (105, 1.1)
    assert body["storage"]["datasets_bytes"] == len(ARITHMETIC) == body["storage"]["total_bytes"]
    assert body["limits"]["accelerator_hours_today"] == 0.1 and body["limits"]["gpu_hours_per_day"] == 24
    today = utcnow().date().isoformat()
    only_today = client.get(f"/v1/usage?from={today}&to={today}", headers=auth("bob")).json()
    assert [(d["day"], d["tokens"]) for d in only_today["days"]] == [(today, 999)]
    assert only_today["storage"]["total_bytes"] == 0
    for query, field in [("from=2026-02-01&to=2026-01-01", "from:"), ("from=2024-01-01&to=2026-01-01", "from:"),
                         ("from=yesterday", "from"), ("to=2026-13-01", "to")]:
        answer = client.get(f"/v1/usage?{query}", headers=auth())
        assert answer.status_code == 422 and field in answer.json()["detail"], (query, answer.text)


def test_submit_past_todays_accelerator_hours_is_a_429_naming_the_limit(client, auth, upload):
    spec = tiny_job_spec(upload)
    limit(client, "alice", gpu_hours_per_day=0.5)
    add_usage(client, "alice", "job_x", days_ago=1, seconds=7200)  # yesterday's hours do not count today
    first = client.post("/v1/jobs", json=spec, headers=auth())
    assert first.status_code == 201
    add_usage(client, "alice", first.json()["id"], seconds=1800, tokens=42)
    job = client.get(f"/v1/jobs/{first.json()['id']}", headers=auth()).json()
    assert job["usage"] == {"tokens": 42, "accelerator_seconds": 1800.0, "storage_bytes": 0}
    for path, body in [("/v1/jobs", spec), ("/v1/sweeps", {"base": spec, "grid": {"kl_weight": [0.1, 0.2]}})]:
        refused = client.post(path, json=body, headers=auth())
        assert refused.status_code == 429, refused.text
        assert "gpu_hours_per_day" in refused.json()["detail"] and "MOL_OWNER_GPU_HOURS_PER_DAY" in refused.text
        assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert client.post("/v1/jobs", json=tiny_job_spec(upload, owner="bob"), headers=auth("bob")).status_code == 201


def test_uploads_and_submits_past_the_storage_quota_are_429s(client, auth, upload):
    spec = tiny_job_spec(upload)  # two small datasets: about 5 KB
    limit(client, "alice", storage_gb=4e-6)  # 4 KB
    refused = upload(ARITHMETIC)
    assert refused.status_code == 429 and "storage_gb" in refused.json()["detail"]
    parts = client.post("/v1/uploads", json={"filename": "big.jsonl", "purpose": "domain", "bytes": 10_000},
                        headers=auth())
    assert parts.status_code == 429 and "storage_gb" in parts.json()["detail"]
    submit = client.post("/v1/jobs", json=spec, headers=auth())
    assert submit.status_code == 429 and "storage_gb" in submit.json()["detail"]
    assert upload(ARITHMETIC, owner="bob").status_code == 201  # another owner's quota is their own
