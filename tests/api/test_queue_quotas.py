"""Quotas at submit and the queue's places on jobs: a priority above the owner's highest is a 422 naming the field,
a job (or sweep) past the owner's queued jobs a 429 naming the limit; a queued job shows its position and reason."""

import json

from fastapi.testclient import TestClient

from api.app import create_app

DOCS = "".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(5))


def test_priority_and_queued_quotas_and_the_queue_places(settings, auth, tmp_path):
    limited = settings.model_copy(update={"owner_queued_jobs": 2, "owner_max_priority": 3,
                                          "owner_limits": {"bob": {"max_priority": 0, "queued_jobs": 5}}})
    with TestClient(create_app(limited, enqueue=lambda *_a, **_k: None)) as client:
        def spec(owner: str, **extra) -> dict:
            ids = {p: client.post("/v1/datasets", headers=auth(owner), data={"purpose": p},
                                  files={"file": ("d.jsonl", DOCS.encode())}).json()["id"]
                   for p in ("domain", "general")}
            return {"name": "q", "base_model": "tiny", "domain_data": [ids["domain"]],
                    "general_data": [ids["general"]], "max_steps": 2, "seq_len": 32} | extra

        alice, bob = spec("alice"), spec("bob")
        refused = client.post("/v1/jobs", headers=auth(), json=alice | {"priority": 4})
        assert refused.status_code == 422 and refused.json()["detail"].startswith(
            "priority: 4 is above the highest priority you may ask for, 3 (MOL_OWNER_MAX_PRIORITY"), refused.text
        assert client.post("/v1/jobs", headers=auth("bob"), json=bob | {"priority": 1}).status_code == 422
        first = client.post("/v1/jobs", headers=auth(), json=alice).json()
        assert (first["priority"], first["queue_position"], first["wait_reason"]) == (
            0, 1, "waiting for a free worker: 0 jobs ahead")
        urgent = client.post("/v1/jobs", headers=auth() | {"Idempotency-Key": "k"}, json=alice | {"priority": 3})
        assert urgent.status_code == 201 and urgent.json()["queue_position"] == 1  # ahead of alice's older job
        past = client.post("/v1/jobs", headers=auth(), json=alice)
        assert past.status_code == 429 and past.json()["detail"].startswith(
            "quota queued_jobs (MOL_OWNER_QUEUED_JOBS, or MOL_OWNER_LIMITS for this owner) is 2; you have 2 job(s) "
            "queued"), past.text
        retry = client.post("/v1/jobs", headers=auth() | {"Idempotency-Key": "k"}, json=alice | {"priority": 3})
        assert retry.status_code == 200 and retry.json()["id"] == urgent.json()["id"]  # a retry adds no job
        sweep = client.post("/v1/sweeps", headers=auth(), json={"base": alice, "grid": {"lr": [1e-3, 2e-3]}})
        assert sweep.status_code == 429 and "quota queued_jobs" in sweep.json()["detail"]
        client.post("/v1/jobs", headers=auth("bob"), json=bob)  # bob never served: he goes between alice's two
        listed = client.get("/v1/jobs", headers=auth()).json()["data"]
        assert [(j["queue_position"], j["wait_reason"]) for j in listed] == [
            (1, "waiting for a free worker: 0 jobs ahead"), (3, "waiting for a free worker: 2 jobs ahead")]
        assert client.get(f"/v1/jobs/{first['id']}", headers=auth()).json()["queue_position"] == 3
        cancelled = client.post(f"/v1/jobs/{first['id']}/cancel", headers=auth()).json()
        assert (cancelled["status"], cancelled["queue_position"], cancelled["wait_reason"]) == ("cancelled", None, None)
