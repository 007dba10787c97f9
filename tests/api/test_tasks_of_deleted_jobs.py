"""Worker tasks for a job deleted through the API skip it quietly, with a log line, instead of raising: the job's
token (dropped: no job is queued), its runner, an interpolation and a task evaluation, deleted before the task
starts or while it runs."""

import json
import logging

from tests.api.conftest import tiny_job_spec
from worker import runner, tasks


def ended_job(client, auth, upload) -> str:
    """A job of alice's, cancelled before it ran: one the API may delete."""
    job_id = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload)).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth()).json()["status"] == "cancelled"
    return job_id


def test_each_task_entry_skips_a_deleted_job_with_a_log_line(client, auth, upload, settings, monkeypatch, caplog):
    task = upload(json.dumps({"question": "What is 1 plus 2?", "answer": "3"}) + "\n", purpose="task").json()["id"]
    job_id = ended_job(client, auth, upload)
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 204
    monkeypatch.setattr(tasks, "_settings", lambda: settings)
    caplog.set_level(logging.INFO, logger="worker.tasks")
    assert tasks.run_job(job_id) == "skipped"
    assert runner.run(job_id, settings) == "skipped"
    assert tasks.interpolate(job_id, "step-2", [0, 1], "side_gone") == "skipped"
    assert tasks.evaluate_task(job_id, task, ["base"], "side_gone") == "skipped"
    assert [r.getMessage() for r in caplog.records] == [
        f"token for 1-process jobs (sent for {job_id}) dropped: no job is queued",
        f"interpolation of job {job_id} skipped: the job was deleted",
        f"task evaluation of job {job_id} skipped: the job was deleted"]


def test_a_job_deleted_while_its_interpolation_runs_is_skipped_with_a_log_line(client, auth, upload, settings,
                                                                                monkeypatch, caplog):
    job_id = ended_job(client, auth, upload)

    def deleted_meanwhile(_path):
        assert client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 204
        raise FileNotFoundError("the checkpoint went with its job")

    monkeypatch.setattr("mol_engine.interpolate.checkpoint_spec", deleted_meanwhile)
    caplog.set_level(logging.INFO, logger="worker.tasks")
    assert tasks.record_interpolation(settings, job_id, "step-2", [0, 1]) == "skipped"
    assert caplog.records[-1].getMessage() == (f"interpolation of job {job_id} not recorded: the job was deleted "
                                               "while it ran")
