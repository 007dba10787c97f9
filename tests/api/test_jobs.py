import json

import pytest

DOCS = "".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(5))
QA = json.dumps({"question": "What is 1 plus 1?", "answer": "2"}) + "\n"


@pytest.fixture
def datasets(upload):
    return {p: upload(DOCS if p != "eval" else QA, purpose=p).json()["id"] for p in ("domain", "general", "eval")}


def spec(datasets, **extra):
    return {"name": "t", "base_model": "tiny", "domain_data": [datasets["domain"]],
            "general_data": [datasets["general"]], "eval_data": datasets["eval"], "max_steps": 5,
            "seq_len": 64} | extra


def test_submit_validates_stores_and_enqueues(client, auth, datasets, queued):
    response = client.post("/v1/jobs", headers=auth(), json=spec(datasets))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["max_steps"] == 5 and job["progress"] == 0
    assert queued == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth()).json()["spec"]["domain_data"] == [datasets["domain"]]
    listed = client.get("/v1/jobs", headers=auth()).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]] and listed["has_more"] is False
    assert listed["data"][0]["base_model"] == "tiny" and "spec" not in listed["data"][0]  # light: no whole spec


@pytest.mark.parametrize(
    ("change", "message"),
    [({"kl_weight": -1}, "kl_weight: Input should be greater than or equal to 0"),
     ({"learning_rate": 1}, "learning_rate: unknown field"),
     ({"base_model": "gpt-9"}, "base_model: unknown model 'gpt-9'"),
     ({"domain_data": ["ds_nope"]}, "domain_data[0]: unknown dataset 'ds_nope'"),
     ({"method": "sft"}, "method: Input should be 'mol', 'cpt' or 'domain_only'"),
     ({"device": "cuda:0", "nproc": 2}, "nproc: 2 processes cannot all run on device 'cuda:0'"),
     ({"kl_weight": "auto"}, "kl_weight: auto and target_general_kl go together"),
     ({"target_general_kl": 0.05}, "kl_weight: auto and target_general_kl go together"),
     ({"kl_weight": "high"}, "kl_weight: Input should be a number or 'auto'")],
)
def test_bad_specs_name_the_field(client, auth, datasets, queued, change, message):
    response = client.post("/v1/jobs", headers=auth(), json=spec(datasets, **change))
    assert response.status_code == 422 and message in response.json()["detail"]
    assert queued == []


def test_dataset_purpose_must_match(client, auth, datasets):
    response = client.post("/v1/jobs", headers=auth(), json=spec(datasets, eval_data=datasets["domain"]))
    assert response.status_code == 422
    assert "eval_data: dataset" in response.json()["detail"] and "'domain', not 'eval'" in response.json()["detail"]


def test_other_owners_datasets_and_jobs_are_invisible(client, auth, datasets):
    assert client.post("/v1/jobs", headers=auth("bob"), json=spec(datasets)).status_code == 422
    job = client.post("/v1/jobs", headers=auth(), json=spec(datasets)).json()
    for method, path in [("get", ""), ("post", "/cancel"), ("get", "/metrics"), ("get", "/events"),
                         ("get", "/checkpoints"), ("get", "/checkpoints/step-1/download")]:
        assert getattr(client, method)(f"/v1/jobs/{job['id']}{path}", headers=auth("bob")).status_code == 404


def test_cancel_a_queued_job_and_refuse_twice(client, auth, datasets):
    job = client.post("/v1/jobs", headers=auth(), json=spec(datasets)).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth())
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth())
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth()).json()
    assert [e["kind"] for e in events] == ["cancelled"]


def test_dataset_in_use_cannot_be_deleted(client, auth, datasets):
    client.post("/v1/jobs", headers=auth(), json=spec(datasets))
    response = client.delete(f"/v1/datasets/{datasets['domain']}", headers=auth())
    assert response.status_code == 409 and "used by active job" in response.json()["detail"]


def test_models_and_health(client, auth):
    models = client.get("/v1/models", headers=auth()).json()["data"]
    assert [m["id"] for m in models] == ["tiny"] and models[0]["model_type"] == "llama"
    assert client.get("/v1/models").status_code == 401
    assert client.get("/healthz", headers=auth()).json()["database"] == "ok"


def test_session_cookie_authenticates_streams_and_downloads(client, auth):
    assert client.post("/v1/session").status_code == 401
    response = client.post("/v1/session", headers=auth())
    assert response.json() == {"owner": "alice"}
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/v1/jobs").status_code == 200  # the cookie alone now authenticates
    assert client.delete("/v1/session").status_code == 204
    client.cookies.clear()
    assert client.get("/v1/jobs").status_code == 401


def test_jobspec_schema_carries_the_defaults(client, auth):
    schema = client.get("/v1/jobspec", headers=auth()).json()
    assert schema["properties"]["ratio"]["default"] == "1:1"
    assert schema["properties"]["method"]["default"] == "mol"
    assert client.get("/v1/jobspec").status_code == 401


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e999"])
@pytest.mark.parametrize("field", ["max_grad_norm", "lora"])
def test_non_finite_numbers_are_refused_naming_the_field(client, auth, datasets, queued, number, field):
    value = number if field != "lora" else f'{{"alpha": {number}}}'
    body = json.dumps(spec(datasets))[:-1] + f', "{field}": {value}}}'  # raw JSON: Infinity is not standard JSON
    response = client.post("/v1/jobs", headers=auth() | {"Content-Type": "application/json"}, content=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("max_grad_norm:" if field != "lora" else "lora.alpha:")
    assert queued == []


@pytest.mark.parametrize(("change", "where"), [({"name": "a\x00b"}, "name:"), ({"name": "x\x1b[2J"}, "name:"),
                                               ({"self_sample_tokens": 10**12}, "self_sample_tokens:")])
def test_nul_in_a_name_and_absurd_sample_sizes_are_refused(client, auth, datasets, queued, change, where):
    response = client.post("/v1/jobs", headers=auth(), json=spec(datasets, **change))
    assert response.status_code == 422 and response.json()["detail"].startswith(where), response.text
    assert queued == []


BAD_IDS = ["job%00x", "%00", "x" * 5000, "%F0%9F%92%A9", "%FF%FE", "a%0Ab"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_absurd_path_ids_answer_404(client, auth, bad):
    routes = [("get", f"/v1/jobs/{bad}"), ("post", f"/v1/jobs/{bad}/cancel"), ("get", f"/v1/jobs/{bad}/metrics"),
              ("get", f"/v1/jobs/{bad}/events"), ("get", f"/v1/jobs/{bad}/checkpoints"),
              ("get", f"/v1/jobs/{bad}/checkpoints/step-1/download"), ("get", f"/v1/datasets/{bad}"),
              ("delete", f"/v1/datasets/{bad}"), ("get", f"/v1/uploads/{bad}"),
              ("post", f"/v1/uploads/{bad}/cancel")]
    for method, path in routes:
        response = getattr(client, method)(path, headers=auth())
        assert response.status_code == 404, (path, response.text)
    assert client.put(f"/v1/uploads/{bad}/parts/0", headers=auth(), content=b"x").status_code == 404
    assert client.post(f"/v1/uploads/{bad}/complete", headers=auth(), json={}).status_code == 404


def test_checkpoint_names_beyond_int64_answer_404(client, auth, datasets):
    job = client.post("/v1/jobs", headers=auth(), json=spec(datasets)).json()
    for name in ["step-99999999999999999999", "step-1%00", "step-%F0%9F%92%A9"]:
        assert client.get(f"/v1/jobs/{job['id']}/checkpoints/{name}/download", headers=auth()).status_code == 404


@pytest.mark.parametrize("after", ["99999999999999999999", str(2**63), str(2**31), "-1"])
@pytest.mark.parametrize("what", ["metrics", "events"])
def test_after_beyond_any_seq_is_refused_naming_it(client, auth, datasets, after, what):
    job = client.post("/v1/jobs", headers=auth(), json=spec(datasets)).json()
    response = client.get(f"/v1/jobs/{job['id']}/{what}", headers=auth(), params={"after": after})
    assert response.status_code == 422 and response.json()["detail"].startswith("query.after:"), response.text
    assert client.get(f"/v1/jobs/{job['id']}/{what}", headers=auth(), params={"after": 2**31 - 1}).json() == []


def test_a_last_event_id_beyond_any_seq_restarts_the_stream(client, auth, datasets):
    job = client.post("/v1/jobs", headers=auth(), json=spec(datasets)).json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth())  # ended: the stream sends its backlog and ends
    headers = auth() | {"Accept": "text/event-stream", "Last-Event-ID": "99999999999999999999:0"}
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers) as s:
        data = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert [d.get("kind") for d in data] == ["cancelled", None] and data[-1] == {"status": "cancelled"}
