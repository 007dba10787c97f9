"""Every timestamp the API sends is UTC ISO 8601 ending in Z: POST and GET alike, JSON and SSE, on SQLite (which
hands back naive datetimes) and PostgreSQL (aware ones)."""

from __future__ import annotations

import json
import re

from store.db import WorkerSeen, utcnow

UTC_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
LOOKS_LIKE_A_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def timestamps(value) -> list[str]:
    """Every string in ``value`` (any JSON) that holds a date and time."""
    if isinstance(value, dict):
        return [t for item in value.values() for t in timestamps(item)]
    if isinstance(value, list):
        return [t for item in value for t in timestamps(item)]
    return [value] if isinstance(value, str) and LOOKS_LIKE_A_TIME.match(value) else []


def assert_utc_z(answer, count: int) -> None:
    found = timestamps(answer.json() if hasattr(answer, "json") else answer)
    assert len(found) >= count, found
    assert all(UTC_Z.fullmatch(t) for t in found), found


def test_every_timestamp_ends_in_z(client, auth, upload):
    made = upload('{"text": "a document"}\n')
    assert made.status_code == 201
    assert_utc_z(made, 1)
    dataset = made.json()["id"]
    assert_utc_z(client.get("/v1/datasets", headers=auth()), 1)
    assert_utc_z(client.get(f"/v1/datasets/{dataset}", headers=auth()), 1)

    parted = client.post("/v1/uploads", headers=auth(), json={"filename": "b.jsonl", "purpose": "domain", "bytes": 9})
    assert_utc_z(parted, 2)  # created_at, expires_at
    assert_utc_z(client.get(f"/v1/uploads/{parted.json()['id']}", headers=auth()), 2)

    spec = {"name": "t", "base_model": "tiny", "domain_data": [dataset], "general_source": "self", "max_steps": 2,
            "seq_len": 64}
    job = client.post("/v1/jobs", headers=auth(), json=spec)
    assert job.status_code == 201, job.text
    assert_utc_z(job, 1)
    job_id = job.json()["id"]
    assert_utc_z(client.post(f"/v1/jobs/{job_id}/cancel", headers=auth()), 2)  # created_at, finished_at
    assert_utc_z(client.get(f"/v1/jobs/{job_id}", headers=auth()), 2)
    assert_utc_z(client.get("/v1/jobs", headers=auth()), 2)
    assert_utc_z(client.get(f"/v1/jobs/{job_id}/events", headers=auth()), 1)

    stream = client.get(f"/v1/jobs/{job_id}/events", headers=auth() | {"Accept": "text/event-stream"})
    events = [json.loads(line[5:]) for line in stream.text.splitlines() if line.startswith("data:")]
    assert_utc_z([e for e in events if "kind" in e], 1)

    with client.app.state.services.sessions() as db:
        db.add(WorkerSeen(name="w1@host", last_seen=utcnow()))
        db.commit()
    assert_utc_z(client.get("/healthz", headers=auth()), 1)
