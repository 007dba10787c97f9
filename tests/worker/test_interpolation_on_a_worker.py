"""POST /v1/jobs/{id}/interpolations reaches a real Celery worker over Redis, which stores the rows."""


def test_an_interpolation_runs_on_a_worker_and_its_rows_are_listed(api, workers, submit, wait_for):
    workers.start()
    job_id = submit(max_steps=2, eval_every=2, save_every=2, eval_data=None)
    job = wait_for(lambda: (j := api.get(f"/v1/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
                   what="job end")
    assert job["status"] == "succeeded", job["error"]
    response = api.post(f"/v1/jobs/{job_id}/interpolations", json={"checkpoint": "step-2", "alphas": [0, 0.5]})
    assert response.status_code == 202, response.text
    (done,) = wait_for(lambda: api.get(f"/v1/jobs/{job_id}/interpolations").json(), timeout=60,
                       what="interpolation rows")
    assert done["error"] is None and [r["alpha"] for r in done["rows"]] == [0.0, 0.5]
    assert done["rows"][0]["general_kl"] == 0.0 < done["rows"][1]["general_kl"]
    kinds = [e["kind"] for e in api.get(f"/v1/jobs/{job_id}/events").json()]
    assert kinds[-1] == "interpolation"
