"""`mol client` against a live uvicorn server: upload, submit, list, pause, resume, cancel, follow, download, and
errors that print the server's detail (exit 1, no traceback). The commands run in-process through the `mol` entry
point."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import httpx
import pytest
import yaml

from api.app import create_app
from api.client import MolClient, Progress, human_bytes
from mol_cli.main import main
from mol_engine.spec_file import load_spec
from store.settings import Settings
from tests.live_server import serving
from worker.runner import run

TOKEN = "tok-alice"  # conftest's alice
DOCS = "".join(json.dumps({"text": f"Question: What is {i} plus 1?\nAnswer: {i + 1}"}) + "\n" for i in range(40))
PROSE = "".join(json.dumps({"text": f"The river and the stone number {i} under the quiet morning."}) + "\n"
                for i in range(40))


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    """conftest's settings on SQLite only: the client speaks HTTP, the database behind it is another file's test."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_model_dir)
    return Settings(home=tmp_path / "home", models_dir=models, demo_model=False, max_upload_mb=1,
                    tokens="alice:tok-alice,bob:tok-bob", stream_poll_s=0.05)


@pytest.fixture
def server(settings, monkeypatch):
    """The base URL of a real server whose queue only records; MOL_API_URL and MOL_TOKEN point the client at it."""
    app = create_app(settings, enqueue=lambda _job_id: None)
    with serving(app, grace_s=1) as base:
        monkeypatch.setenv("MOL_API_URL", base)
        monkeypatch.setenv("MOL_TOKEN", TOKEN)
        yield base


def mol(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["client", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def api(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})


def datasets(capsys, tmp_path) -> tuple[str, str]:
    (tmp_path / "docs.jsonl").write_text(DOCS)
    (tmp_path / "prose.jsonl").write_text(PROSE)
    code, domain, err = mol(capsys, "upload", str(tmp_path / "docs.jsonl"), "--purpose", "domain")
    assert code == 0 and domain.strip().startswith("ds_"), err
    assert "upload docs.jsonl" in err and "100%" in err  # the progress bar, on stderr
    with MolClient(os.environ["MOL_API_URL"], TOKEN) as client:  # several parts: 1000 bytes each
        general = client.upload(tmp_path / "prose.jsonl", "general", part_bytes=1000)
    assert general["sha256"] == hashlib.sha256(PROSE.encode()).hexdigest() and len(PROSE) > 2000
    return domain.strip(), general["id"]


def spec_file(tmp_path, domain: str, general: str, **extra) -> str:
    spec = {"name": "cli", "base_model": "tiny", "domain_data": [domain], "general_data": [general], "seq_len": 32,
            "batch_size": 4, "lr": 3e-3, "max_steps": 2, "eval_every": 2, "save_every": 2, "eval_batches": 1} | extra
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_upload_submit_list_and_cancel(server, capsys, tmp_path):
    domain, general = datasets(capsys, tmp_path)
    with api(server) as http:
        stored = http.get(f"/v1/datasets/{domain}").json()
        assert stored["filename"] == "docs.jsonl" and stored["documents"] == 40
        code, out, err = mol(capsys, "submit", spec_file(tmp_path, domain, general))
        job_id = out.strip()
        assert code == 0 and job_id.startswith("job_"), err
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        code, table, _ = mol(capsys, "list")
        header, row = table.splitlines()[:2]
        assert code == 0 and header.split()[:3] == ["ID", "NAME", "STATUS"] and row.split()[:3] == [job_id, "cli",
                                                                                                    "queued"]
        for command, status in (("pause", "paused"), ("resume", "queued"), ("pause", "paused")):
            code, out, err = mol(capsys, command, job_id)
            assert code == 0 and out.strip() == f"{job_id} {status}", err
        code, out, _ = mol(capsys, "cancel", job_id)  # a paused job cancels at once
        assert code == 0 and out.strip() == f"{job_id} cancelled"
        assert http.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        code, _, err = mol(capsys, "cancel", job_id)  # a 409: the server's detail, exit 1
        assert code == 1 and f"job '{job_id}' is already cancelled" in err and "Traceback" not in err
        code, _, err = mol(capsys, "resume", job_id)
        assert code == 1 and "only a paused job resumes" in err and "(HTTP 409)" in err


def test_errors_print_the_detail_and_exit_1_without_a_traceback(server, capsys, tmp_path):
    code, _, err = mol(capsys, "submit", spec_file(tmp_path, "ds_nope", "ds_nope"))
    assert code == 1 and "ds_nope" in err and "(HTTP 422)" in err and "Traceback" not in err
    code, _, err = mol(capsys, "download", "job_0123456789abcdef", "best", "-o", str(tmp_path / "x.tar.gz"))
    assert code == 1 and "job 'job_0123456789abcdef' not found" in err and not (tmp_path / "x.tar.gz").exists()
    code, _, err = mol(capsys, "--token", "wrong", "list")
    assert code == 1 and "(HTTP 401)" in err and "Traceback" not in err
    code, _, err = mol(capsys, "upload", str(tmp_path / "missing.jsonl"), "--purpose", "eval")
    assert code == 2 and "missing.jsonl" in err and "Traceback" not in err


def test_follow_and_download_a_finished_job(server, settings, capsys, tmp_path):
    domain, general = datasets(capsys, tmp_path)
    job_id = mol(capsys, "submit", spec_file(tmp_path, domain, general))[1].strip()
    assert run(job_id, settings) == "succeeded"
    code, out, _ = mol(capsys, "follow", job_id)
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "job ended: succeeded"
    assert any(line.startswith("step 2 ") and "train/loss=" in line for line in lines)  # metrics, one line each
    assert any(line.endswith("Z  succeeded: " + line.split("succeeded: ", 1)[-1]) for line in lines)  # the event
    code, out, err = mol(capsys, "download", job_id, "2", "-o", str(tmp_path))
    tarball = tmp_path / f"{job_id}-step-2.tar.gz"  # full weights: the plain name, no "-merged"
    assert code == 0 and out.strip() == str(tarball) and "download 2" in err and "B/s" in err
    with tarfile.open(tarball) as tar:
        assert f"{job_id}-step-2/config.json" in tar.getnames()


def test_follow_resumes_from_the_last_event_id_after_a_dropped_connection():
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        if len(seen) == 1:
            def dropped():
                yield b'event: metric\nid: 1:0\ndata: {"seq": 1, "step": 1, "train/loss": 2.5}\n\n'
                raise httpx.ReadError("connection reset")
            return httpx.Response(200, content=dropped())
        return httpx.Response(200, content=b': ping\n\nevent: event\nid: 1:1\ndata: {"kind": "succeeded", "message": '
                                            b'"done", "created_at": "2026-11-29T18:00:00Z"}\n\n'
                                            b'event: end\nid: 1:1\ndata: {"status": "succeeded"}\n\n')

    client = MolClient("http://mol.test", "t", transport=httpx.MockTransport(handler))
    messages = [(m.event, m.id) for m in client.follow("job_1")]
    assert messages == [("metric", "1:0"), ("event", "1:1"), ("end", "1:1")] and seen == [None, "1:0"]


def test_follow_reconnects_after_an_error_event_and_shows_it_not():
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        if len(seen) == 1:  # the API's database stayed unreachable: it ends the stream with an error event
            return httpx.Response(200, content=b'event: metric\nid: 1:0\ndata: {"seq": 1, "step": 1}\n\n'
                                               b'event: error\ndata: {"detail": "the database was unreachable"}\n\n')
        return httpx.Response(200, content=b'event: end\nid: 1:0\ndata: {"status": "succeeded"}\n\n')

    client = MolClient("http://mol.test", "t", transport=httpx.MockTransport(handler))
    messages = [(m.event, m.id) for m in client.follow("job_1")]
    assert messages == [("metric", "1:0"), ("end", "1:0")] and seen == [None, "1:0"]


def test_a_part_cut_off_is_sent_again_and_the_progress_counts_it_once(tmp_path):
    puts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/uploads":
            return httpx.Response(201, json={"id": "up_1"})
        if request.method == "PUT":
            puts.append(len(request.read()))
            if len(puts) == 2:  # the second part's first try: the connection drops once its bytes are sent
                raise httpx.WriteError("connection reset")
            return httpx.Response(200, json={})
        return httpx.Response(201, json={"id": "ds_1", "part_count": json.loads(request.content)["part_count"]})

    (tmp_path / "f.jsonl").write_bytes(b"x" * 2500)
    advanced: list[int] = []
    with MolClient("http://mol.test", "t", transport=httpx.MockTransport(handler)) as client:
        dataset = client.upload(tmp_path / "f.jsonl", "domain", advanced.append, part_bytes=1000)
    assert dataset == {"id": "ds_1", "part_count": 3} and puts == [1000, 1000, 1000, 500] and sum(advanced) == 2500


def test_progress_writes_one_final_line_when_not_on_a_terminal():
    assert [human_bytes(n) for n in (812, 3482, 5 * 2**30)] == ["812 B", "3.4 KiB", "5.0 GiB"]
    out = io.StringIO()
    bar = Progress("upload f.jsonl", 2048, out=out, every=0)
    bar.advance(1024)
    assert out.getvalue() == ""  # a log file gets no redraws
    assert bar.line().startswith("upload f.jsonl [" + "#" * 15 + "." * 15 + "]  50% 1.0 KiB of 2.0 KiB, ")
    bar.advance(1000)  # a download's total is an estimate: once done, what came is the whole
    bar.done()
    assert out.getvalue().startswith("upload f.jsonl [" + "#" * 30 + "] 100% 2.0 KiB of 2.0 KiB, ")
    assert out.getvalue().endswith("B/s\n") and out.getvalue().count("\n") == 1


def test_the_client_imports_nothing_of_the_server_and_of_the_engine_only_its_spec_reader_and_names():
    code = ("import sys, mol_cli.main, mol_cli.commands.client_refs\n"  # with every client command registered
            "mol_cli.main.build_parser([mol_cli.main.client]).parse_args(['client', 'list'])\n"
            "print(' '.join(sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "httpx" in loaded and not [m for m in loaded if m.split(".")[0] in ("torch", "transformers", "fastapi",
                                                                               "sqlalchemy", "pydantic", "store")]
    assert {m for m in loaded if m.split(".")[0] == "mol_engine"} == {  # step-N names, eval_tasks' names
        "mol_engine", "mol_engine.spec_file", "mol_engine.run_dir", "mol_engine.task_names"}
    assert "mol_cli.commands.client_resources" in loaded
    assert [m for m in loaded if m.split(".")[0] == "api"] == ["api", "api.client"]


def test_a_spec_file_means_the_same_to_mol_train_and_to_the_client(server, capsys, tmp_path):
    """`ratio: 4:1` is the integer 241 to a plain YAML 1.1 reader: every command reads a spec file with the engine's
    one reader (mol_engine/spec_file.py), so `mol train` and what `mol client submit` and `sweeps create` send agree."""
    domain, general = datasets(capsys, tmp_path)
    fields = (f"name: cli\nbase_model: tiny\ndomain_data: [{domain}]\ngeneral_data: [{general}]\nratio: 4:1\n"
              "lr: 3e-3\nseq_len: 32\nbatch_size: 4\nmax_steps: 2\n")
    (tmp_path / "spec.yaml").write_text(fields)
    (tmp_path / "sweep.yaml").write_text("base:\n" + "".join(f"  {line}\n" for line in fields.splitlines())
                                         + "grid:\n  kl_weight: [0.5, 1]\n")
    trained = load_spec(tmp_path / "spec.yaml")  # `mol train`'s
    assert (trained.ratio, trained.lr) == ("4:1", 3e-3)
    code, out, err = mol(capsys, "submit", str(tmp_path / "spec.yaml"))
    assert code == 0, err
    code, sweep, err = mol(capsys, "sweeps", "create", str(tmp_path / "sweep.yaml"), "--json")
    assert code == 0, err
    with api(server) as http:
        sent = [http.get(f"/v1/jobs/{job_id}").json()["spec"]
                for job_id in (out.strip(), *(job["id"] for job in json.loads(sweep)["data"]))]
    assert [(spec["ratio"], spec["lr"]) for spec in sent] == [("4:1", 3e-3)] * 3
