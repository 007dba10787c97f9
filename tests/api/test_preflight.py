"""POST /v1/estimates (the pre-flight estimate of a spec on a device or live worker) and the submit check that
refuses a job no live worker's memory holds, naming what to change."""

import math

from mol_engine.estimate import DEVICES, estimate, read_model_shape
from mol_engine.spec import JobSpec
from store.db import WorkerSeen, utcnow
from tests.api.conftest import tiny_job_spec


def test_the_estimate_of_a_spec_on_a_device_and_on_the_live_workers(client, auth, upload):
    spec = tiny_job_spec(upload)
    body = client.post("/v1/estimates", headers=auth(), json={"spec": spec, "device": "NVIDIA H100 80GB HBM3"})
    assert body.status_code == 200, body.text
    answer = body.json()
    assert (answer["device"], answer["dtype"], answer["fits"], answer["workers"]) == ("H100", "bf16", True, [])
    assert answer["peak_bytes"] == sum(answer["parts"].values()) and answer["job_s"] > answer["step_s"] > 0
    assert "assumed" in answer["rate_source"]
    unknown = client.post("/v1/estimates", headers=auth(), json={"spec": spec, "device": "TPU v5"})
    assert unknown.status_code == 422 and "device: unknown device 'TPU v5'" in unknown.text
    assert "cpu" in unknown.json()["detail"] and "H100" in unknown.json()["detail"]
    bad = client.post("/v1/estimates", headers=auth(), json={"spec": spec | {"batch_size": 0}})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("spec.batch_size")
    with client.app.state.services.sessions.begin() as db:
        db.add(WorkerSeen(name="cpu-1:1", last_seen=utcnow(), device="cpu (2 cores)", memory_mib=64_000))
    answer = client.post("/v1/estimates", headers=auth(), json={"spec": spec}).json()  # the live worker by default
    assert (answer["worker"], answer["device"], answer["fits"]) == ("cpu-1:1", "cpu", True)
    assert answer["workers"][0] | {"peak_bytes": 0} == {"name": "cpu-1:1", "device": "cpu (2 cores)",
                                                         "memory_bytes": 64_000 * 2**20, "peak_bytes": 0, "fits": True}


def test_a_job_that_fits_no_live_worker_is_refused_naming_what_to_change(client, auth, upload, settings):
    small = tiny_job_spec(upload, batch_size=8)
    shape = read_model_shape(settings.models_dir / "tiny")
    need = estimate(JobSpec.model_validate(small), shape, DEVICES["cpu"]).peak_bytes
    memory_mib = math.ceil(need / (1 - settings.estimate_memory_margin) / 2**20) + 1  # batch 8 fits, no more
    with client.app.state.services.sessions.begin() as db:
        db.add(WorkerSeen(name="cpu-1:1", last_seen=utcnow(), device="cpu (2 cores)", memory_mib=memory_mib))
    response = client.post("/v1/jobs", headers=auth(), json=small | {"batch_size": 1024})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("batch_size, gradient_checkpointing, finetune, reference, nproc: the job needs about")
    assert "batch_size 1024 -> 8 (grad_accum 1 -> 128 keeps the step's rows) fits" in detail
    assert client.post("/v1/jobs", headers=auth(), json=small).status_code == 201
