"""A job's log, tailed by offset (GET /v1/jobs/{id}/log), and its trackers' folders (GET /v1/jobs/{id}/trackers)."""

import io
import tarfile
from typing import get_args

from api.routes.job_files import VIEW
from mol_engine.spec import Tracker
from store.db import Dataset
from tests.api.conftest import tiny_job_spec


def _job(client, auth, upload) -> str:
    return client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload, name="logged")).json()["id"]


def test_a_job_s_log_is_tailed_by_offset_in_bounded_whole_lines(client, auth, upload):
    job_id = _job(client, auth, upload)
    assert client.get(f"/v1/jobs/{job_id}/log", headers=auth()).json() == {
        "offset": 0, "next_offset": 0, "size": 0, "text": "", "ended": False}  # no attempt yet
    svc = client.app.state.services
    with svc.sessions() as db:
        domain = db.get(Dataset, client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["spec"]["domain_data"][0])
    lines = [f"[step {i}] loss={i / 10:.2f} é\n" for i in range(1, 80)] + [f"reading {domain.path}\n"]
    log = svc.settings.job_log_file(job_id)
    log.parent.mkdir(parents=True)
    log.write_text("".join(lines))
    # chunks of 256 bytes: more than every line; a tail of 60 bytes more than the last line, whose server path is
    # as long as the test's temporary folder (pytest-xdist's are longer): it holds that line and a step line
    tail_bytes = len(lines[-1].encode()) + 60
    svc.settings.job_log_chunk_kb, svc.settings.job_log_tail_kb = 0.25, tail_bytes / 1024
    assert len(lines[-1].encode()) < 256, "the test's temporary folder is too deep for its 256-byte chunks"
    read, offset, answers = "", 0, 0
    while True:  # a client following next_offset sees every line once, each answer whole lines within the bound
        chunk = client.get(f"/v1/jobs/{job_id}/log?offset={offset}", headers=auth()).json()
        assert chunk["offset"] == offset and chunk["size"] == log.stat().st_size
        assert len(chunk["text"].encode()) <= 256 and (chunk["text"].endswith("\n") or not chunk["text"])
        read, offset, answers = read + chunk["text"], chunk["next_offset"], answers + 1
        if offset == chunk["size"]:
            break
    assert answers > 5
    assert read == "".join(lines).replace(domain.path, f"data.jsonl ({domain.id})")  # no server path shown
    tail = client.get(f"/v1/jobs/{job_id}/log", headers=auth()).json()
    assert tail["next_offset"] == tail["size"] and tail["text"].startswith("[step ")  # from a line's start
    assert tail["text"].endswith(f"reading data.jsonl ({domain.id})\n") and len(tail["text"].encode()) <= tail_bytes
    with log.open("a") as handle:
        handle.write("[eval 40] domain_ppl=3.1\n")
    more = client.get(f"/v1/jobs/{job_id}/log?offset={tail['next_offset']}", headers=auth()).json()
    assert more["text"] == "[eval 40] domain_ppl=3.1\n"
    past = client.get(f"/v1/jobs/{job_id}/log?offset={more['size'] + 1}", headers=auth())
    assert past.status_code == 422 and past.json()["detail"].startswith("offset: ")
    assert client.get(f"/v1/jobs/{job_id}/log?offset=-1", headers=auth()).json()["detail"].startswith("query.offset")
    assert client.get(f"/v1/jobs/{job_id}/log", headers=auth("bob")).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/log").status_code == 401


def test_a_job_s_tracker_folders_are_listed_and_downloadable(client, auth, upload):
    job_id = _job(client, auth, upload)
    assert client.get(f"/v1/jobs/{job_id}/trackers", headers=auth()).json() == []
    run = client.app.state.services.settings.runs_dir / job_id
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x" * 100)
    (run / "mlruns" / "0").mkdir(parents=True)
    (run / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    listed = client.get(f"/v1/jobs/{job_id}/trackers", headers=auth()).json()
    assert [(t["name"], t["folder"], t["bytes"]) for t in listed] == [("tensorboard", "tensorboard", 100),
                                                                      ("mlflow", "mlruns", 14)]
    assert listed[0]["view"] == f"tensorboard --logdir {job_id}-tensorboard"
    archive = client.get(listed[1]["download"], headers=auth())
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert f"{job_id}-mlruns/0/meta.yaml" in tar.getnames()
    assert client.get(f"/v1/jobs/{job_id}/trackers/wandb/download", headers=auth()).status_code == 404
    assert client.get(listed[0]["download"], headers=auth("bob")).status_code == 404


def test_every_tracker_has_a_command_that_shows_it():
    assert set(VIEW) == set(get_args(Tracker))
