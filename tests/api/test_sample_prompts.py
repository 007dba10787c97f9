"""A job's sample_prompts as a dataset: uploaded with purpose 'prompts' (checked like any dataset), referenced by
id, refused when it is unknown or of another purpose; a listed spec's prompts need no dataset."""

import json

DOCS = "".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(5))
PROMPTS = json.dumps({"prompt": "Once upon a time"}) + "\n" + json.dumps({"prompt": "The answer is"}) + "\n"


def spec(domain: str, general: str, **extra) -> dict:
    return {"name": "t", "base_model": "tiny", "domain_data": [domain], "general_data": [general],
            "max_steps": 5, "seq_len": 64} | extra


def test_a_prompts_dataset_is_checked_and_referenced(client, auth, upload, queued):
    domain, general = (upload(DOCS, purpose=p).json()["id"] for p in ("domain", "general"))
    prompts = upload(PROMPTS, purpose="prompts")
    assert prompts.status_code == 201 and prompts.json()["documents"] == 2, prompts.text
    bad = upload(json.dumps({"text": "no prompt"}) + "\n", purpose="prompts")
    assert bad.status_code == 422 and "line 1: missing field 'prompt'" in bad.json()["detail"]

    made = client.post("/v1/jobs", headers=auth(), json=spec(domain, general, sample_prompts=prompts.json()["id"]))
    assert made.status_code == 201, made.text
    listed = client.post("/v1/jobs", headers=auth(), json=spec(domain, general, sample_prompts=["Hello"]))
    assert listed.status_code == 201, listed.text
    for ref, problem in ((domain, f"dataset '{domain}' was uploaded for 'domain', not 'prompts'"),
                         ("ds_nope", "unknown dataset 'ds_nope'")):
        refused = client.post("/v1/jobs", headers=auth(), json=spec(domain, general, sample_prompts=ref))
        assert refused.status_code == 422 and refused.json()["detail"] == f"sample_prompts: {problem}"


def test_samples_and_drift_events_are_stored_and_served_bounded(client, auth, upload, queued):
    from mol_engine.drift import PassageKL, drift_event
    from mol_engine.samples import Sample, samples_event
    from worker.runner import DatabaseRecorder

    domain, general = (upload(DOCS, purpose=p).json()["id"] for p in ("domain", "general"))
    job_id = client.post("/v1/jobs", headers=auth(), json=spec(domain, general)).json()["id"]
    recorder = DatabaseRecorder(client.app.state.services.sessions, job_id, "test", heartbeat_s=None)
    recorder.on_event(samples_event(0, [Sample("p" * 5000, "c" * 5000)]))
    recorder.on_event(drift_event(3, [PassageKL(0, [1, 2, 3], [None, 0.5, 0.25])], Pieces()))
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth()).json()
    samples, drift = (next(e for e in events if e["kind"] == kind) for kind in ("samples", "drift"))
    assert samples["step"] == 0 and [len(v) for v in samples["data"]["samples"][0].values()] == [300, 1500]
    assert drift["step"] == 3 and drift["data"]["passages"][0]["kl"] == 0.375
    assert drift["data"]["strip"] == {"index": 0, "start": 0, "pieces": ["1", "2", "3"], "kl": [None, 0.5, 0.25]}


class Pieces:
    def decode(self, ids, **kwargs) -> str:
        return "".join(str(i) for i in ids)
