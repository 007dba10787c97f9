"""A job's sample_prompts as a dataset: uploaded with purpose 'prompts' (checked like any dataset), referenced by
id, refused when it is unknown or of another purpose; a listed spec's prompts need no dataset."""

import json

DOCS = "".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(5))
PROMPTS = json.dumps({"prompt": "Once upon a time"}) + "\n" + json.dumps({"prompt": "The answer is"}) + "\n"


def spec(domain: str, general: str, **extra) -> dict:
    return {"name": "t", "base_model": "tiny", "domain_data": [domain], "general_data": [general],
            "max_steps": 5} | extra


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
