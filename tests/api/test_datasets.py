import json

import pytest

DOCS = "".join(json.dumps({"text": f"document number {i} about things"}) + "\n" for i in range(5))


def test_upload_list_get_delete(client, settings, auth, upload):
    created = upload(DOCS)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["documents"] == 5 and body["bytes"] == len(DOCS) and len(body["sha256"]) == 64
    assert body["filename"] == "data.jsonl"
    stored = list(settings.datasets_dir.iterdir())
    assert len(stored) == 1 and stored[0].name != "data.jsonl"  # server-chosen name
    assert [d["id"] for d in client.get("/v1/datasets", headers=auth()).json()] == [body["id"]]
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth()).json()["sha256"] == body["sha256"]
    (stored[0].with_name(stored[0].name + ".mol-cache") / "topk-0123").mkdir(parents=True)  # a job cached targets
    assert client.delete(f"/v1/datasets/{body['id']}", headers=auth()).status_code == 204
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth()).status_code == 404
    assert list(settings.datasets_dir.iterdir()) == []


def test_bad_uploads_get_clear_4xx_and_leave_nothing(client, settings, auth, upload):
    cases = [
        (upload(""), 422, "no documents found"),
        (upload('{"text": "ok"}\n{"text": oops}\n'), 422, "data.jsonl, line 2: invalid JSON"),
        (upload(DOCS, purpose="training"), 422, "purpose: must be one of domain, general, eval"),
        (upload(DOCS, filename="data.csv"), 422, "file: 'data.csv' must end with one of"),
        (upload(DOCS, purpose="eval"), 422, "line 1: missing field 'question'"),
        (upload("x" * 60_000, filename="big.txt"), 413, "larger than the limit"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]
    assert [p for p in settings.datasets_dir.iterdir()] == []


def test_every_bad_line_is_listed_up_to_the_cap_and_the_rest_counted(client, settings, upload):
    three = upload('{"text": oops}\n[1]\n{"text": "ok"}\n{"txt": "x"}\n')
    assert three.status_code == 422 and three.json()["detail"].splitlines() == [
        "data.jsonl, line 1: invalid JSON (Expecting value)", "data.jsonl, line 2: expected a JSON object",
        "data.jsonl, line 4: missing field 'text'"]
    qa = upload('{"question": "q", "answer": " "}\n{"question": "q"}\n', purpose="eval", filename="qa.jsonl")
    assert qa.json()["detail"].splitlines() == ["qa.jsonl, line 1: field 'answer' is empty",
                                                "qa.jsonl, line 2: missing field 'answer'"]
    latin = upload("ok\n\ncaf\u00e9\nna\u00efve\n".encode("latin-1"), filename="notes.txt")
    assert [line.split(":")[0] for line in latin.json()["detail"].splitlines()] == ["notes.txt, line 3",
                                                                                  "notes.txt, line 4"]
    cap = settings.max_bad_lines
    many = upload('{"text": "ok"}\n' + "[1]\n" * (cap + 5)).json()["detail"].splitlines()
    assert many == [f"data.jsonl, line {n}: expected a JSON object" for n in range(2, cap + 2)] + [
        "and 5 more bad lines"]


def test_missing_file_part(client, auth):
    response = client.post("/v1/datasets", headers=auth(), data={"purpose": "domain"},
                           files={"other": ("x.txt", b"abc")})
    assert response.status_code == 422 and "file: missing" in response.json()["detail"]


def test_auth_and_isolation(client, auth, upload):
    assert client.get("/v1/datasets").status_code == 401
    assert client.get("/v1/datasets", headers={"Authorization": "Bearer nope"}).status_code == 401
    mine = upload(DOCS).json()["id"]
    assert client.get(f"/v1/datasets/{mine}", headers=auth("bob")).status_code == 404
    assert client.delete(f"/v1/datasets/{mine}", headers=auth("bob")).status_code == 404
    assert client.get("/v1/datasets", headers=auth("bob")).json() == []


def test_token_stores_appear_in_the_dataset_and_go_with_it(client, settings, auth, upload, tiny_model_dir):
    from mol_engine.modeling import load_tokenizer
    from mol_engine.token_store import open_or_build

    body = upload(DOCS).json()
    assert body["token_stores"] == []  # no job has tokenized it yet
    stored = next(settings.datasets_dir.iterdir())
    store = open_or_build(stored, load_tokenizer(str(tiny_model_dir)))  # what a job's first step does
    listed = client.get(f"/v1/datasets/{body['id']}", headers=auth()).json()["token_stores"]
    assert [(s["tokens"], s["documents"], s["dtype"]) for s in listed] == [(store.n_tokens, 5, "uint16")]
    assert listed[0]["tokenizer"] == tiny_model_dir.name and listed[0]["bytes"] > 2 * store.n_tokens
    assert client.delete(f"/v1/datasets/{body['id']}", headers=auth()).status_code == 204
    assert not store.path.exists() and list(settings.datasets_dir.iterdir()) == []


def test_undecodable_or_columnless_files_are_refused_at_upload(client, auth, upload, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    latin = upload("caf\u00e9\n".encode() + "\n\nna\u00efve\n".encode("latin-1"), filename="notes.txt")
    assert latin.status_code == 422 and "notes.txt, line 4: not valid UTF-8" in latin.json()["detail"]
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    parquet = upload((tmp_path / "p.parquet").read_bytes(), filename="p.parquet")
    assert parquet.status_code == 422 and "missing column 'text'" in parquet.json()["detail"]


def test_deleting_a_demo_dataset_leaves_the_demo_usable(client, settings, auth):
    from api.service import register_demo_datasets
    from mol_engine.demo import DemoPaths

    demo = DemoPaths.under(settings.home / "demo")
    demo.root.mkdir()
    qa = json.dumps({"question": "What is 1 plus 1?", "answer": "2"}) + "\n"
    for path, text in ((demo.domain, DOCS), (demo.general, DOCS.replace("things", "stuff")), (demo.eval, qa)):
        path.write_text(text)
    sessions = client.app.state.services.sessions
    register_demo_datasets(sessions, settings, "alice")  # what `mol up` does at start
    listed = {d["purpose"]: d["id"] for d in client.get("/v1/datasets", headers=auth()).json()}
    assert client.delete(f"/v1/datasets/{listed['domain']}", headers=auth()).status_code == 204
    assert demo.domain.read_text() == DOCS  # the demo's own file, not the row's to delete
    register_demo_datasets(sessions, settings, "alice")  # the next start
    again = {d["purpose"]: d["id"] for d in client.get("/v1/datasets", headers=auth()).json()}
    assert set(again) == {"domain", "general", "eval"} and again["general"] == listed["general"]
    demo.eval.unlink()  # an older version's DELETE removed it: the start goes on without it
    register_demo_datasets(sessions, settings, "alice")


def raw_upload(client, auth, filename: bytes, content: bytes = DOCS.encode()):
    """A multipart upload whose file name goes out as raw bytes (httpx would percent-encode a NUL)."""
    boundary = b"mol-boundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ndomain\r\n--' + boundary
            + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
            + b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--" + boundary + b"--\r\n")
    headers = auth() | {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    return client.post("/v1/datasets", headers=headers, content=body)


def test_absurd_file_names_are_refused_and_leave_nothing(client, settings, auth):
    for name in [b"a" * 300 + b".jsonl", b"a\x00b.jsonl", b"line\nbreak.jsonl", b"\x00"]:
        response = raw_upload(client, auth, name)
        assert response.status_code == 422 and response.json()["detail"].startswith("file: "), response.text
    assert not settings.datasets_dir.exists() or list(settings.datasets_dir.iterdir()) == []
    assert client.get("/v1/datasets", headers=auth()).json() == []
    assert raw_upload(client, auth, "naïve ☃.jsonl".encode()).json()["filename"] == "naïve ☃.jsonl"


def form(fields: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> tuple[dict[str, str], bytes]:
    """(the Content-Type header, the multipart body) of ``fields`` as sent: (name, value) each, ``file`` a file."""
    body = b""
    for name, value in fields:
        disposition = b'; filename="data.jsonl"' if name == b"file" else b""
        body += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name + b'"' + disposition
        body += b"\r\n\r\n" + value + b"\r\n"
    return {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}, body + b"--" + boundary + b"--\r\n"


def test_control_characters_in_form_fields_are_a_422_naming_the_field_and_leave_nothing(client, settings, auth):
    doc = DOCS.encode()
    cases = [([(b"purpose", b"domain\x00"), (b"file", doc)], "purpose: must not contain control characters"),
             ([(b"file", doc), (b"purpose", b"domain\x00")], "purpose: must not contain control characters"),
             ([(b"file", doc), (b"purpose", b"dom\x01ain")], "purpose: must not contain control characters"),
             ([(b"file", doc), (b"purpose", b"domain"), (b"no\x00te", b"x")], "form field name: must not contain"),
             ([(b"file", doc), (b"purpose", b"domain"), (b"note", b"a\x00b")], "note: must not contain")]
    for fields, message in cases:
        headers, body = form(fields)
        response = client.post("/v1/datasets", headers=auth() | headers, content=body)
        assert response.status_code == 422 and response.json()["detail"].startswith(message), response.text
    assert [p for p in settings.datasets_dir.rglob("*") if p.is_file()] == []
    assert client.get("/v1/datasets", headers=auth()).json() == []
    headers, body = form([(b"file", doc), (b"purpose", b"domain")])
    assert client.post("/v1/datasets", headers=auth() | headers, content=body).status_code == 201


def test_a_database_failure_while_keeping_an_upload_leaves_no_file(client, settings, auth, upload, monkeypatch):
    from api import dataset_store

    def broken(*_args):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(dataset_store, "_twin", broken)
    with pytest.raises(RuntimeError, match="went away"):
        upload(DOCS)
    assert [p for p in settings.datasets_dir.rglob("*") if p.is_file()] == []
