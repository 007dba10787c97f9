"""/v1/uploads: a file in parts, resumable, size-checked as it arrives, with the whole file's sha256."""

import asyncio
import errno
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from starlette.requests import ClientDisconnect

from api.upload import _Receiver
from api.upload_parts import MAX_PARTS, HiddenFile, assemble, receive_part
from api.upload_state import missing_parts
from store.db import SCHEMA_VERSION, Dataset, SchemaVersion, Upload, init_db, make_engine, utcnow
from tests.version_8 import create_version_8_tables

PART = 4096
DATA = "".join(json.dumps({"text": f"document {i}: the river runs north under the stone bridge"}) + "\n"
               for i in range(300)).encode()  # ~24 KB: six parts, under the tests' 52 KB limit


def parts_of(data: bytes, size: int = PART) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.fixture
def start(client, auth):
    """start(size=len(DATA), owner="alice", **fields) -> the created upload's JSON."""

    def create(size: int = len(DATA), owner: str = "alice", **fields):
        body = {"filename": "corpus.jsonl", "purpose": "domain", "bytes": size} | fields
        response = client.post("/v1/uploads", headers=auth(owner), json=body)
        assert response.status_code == 201, response.text
        return response.json()

    return create


@pytest.fixture
def put(client, auth):
    """put(upload_id, index, content, owner="alice") -> the response."""

    def send(upload_id: str, index: int, content, owner: str = "alice"):
        headers = auth(owner) | {"Content-Type": "application/octet-stream"}
        return client.put(f"/v1/uploads/{upload_id}/parts/{index}", headers=headers, content=content)

    return send


def send_all(put, upload_id: str, data: bytes = DATA) -> None:
    for index, chunk in enumerate(parts_of(data)):
        response = put(upload_id, index, chunk)
        assert response.status_code == 200, response.text
        assert response.json() == {"index": index, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()}


def complete(client, auth, upload_id: str, owner: str = "alice", **body):
    return client.post(f"/v1/uploads/{upload_id}/complete", headers=auth(owner), json=body)


def files_under(path) -> list[str]:
    return sorted(p.name for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_parts_make_the_file_with_its_sha256(client, settings, auth, start, put):
    upload = start(mime_type="application/jsonl")
    assert upload["status"] == "pending" and upload["parts"] == [] and upload["id"].startswith("up_")
    send_all(put, upload["id"])
    seen = client.get(f"/v1/uploads/{upload['id']}", headers=auth()).json()
    assert [p["index"] for p in seen["parts"]] == list(range(6)) and seen["received_bytes"] == len(DATA)
    done = complete(client, auth, upload["id"], part_count=6, sha256=hashlib.sha256(DATA).hexdigest())
    assert done.status_code == 201, done.text
    dataset = done.json()
    assert dataset["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert dataset["bytes"] == len(DATA) and dataset["documents"] == 300 and dataset["filename"] == "corpus.jsonl"
    stored = list(settings.datasets_dir.iterdir())
    assert len(stored) == 1 and stored[0].read_bytes() == DATA and not stored[0].name.startswith(".")
    assert files_under(settings.uploads_dir) == []  # the parts are gone
    after = client.get(f"/v1/uploads/{upload['id']}", headers=auth()).json()
    assert after["status"] == "completed" and after["dataset_id"] == dataset["id"]
    assert [d["id"] for d in client.get("/v1/datasets", headers=auth()).json()] == [dataset["id"]]


def test_a_part_sent_again_replaces_the_first(client, settings, auth, start, put):
    upload = start()
    chunks = parts_of(DATA)
    assert put(upload["id"], 2, b"x" * len(chunks[2])).status_code == 200  # a garbled first try
    send_all(put, upload["id"])  # part 2 again, right this time
    assert put(upload["id"], 3, chunks[3]).status_code == 200  # and part 3 twice with the same bytes
    seen = client.get(f"/v1/uploads/{upload['id']}", headers=auth()).json()
    assert [p["index"] for p in seen["parts"]] == list(range(6)) and seen["received_bytes"] == len(DATA)
    assert seen["parts"][2]["sha256"] == hashlib.sha256(chunks[2]).hexdigest()
    assert len(files_under(settings.uploads_dir / upload["id"])) == 6  # one file per part, none left over
    dataset = complete(client, auth, upload["id"]).json()
    assert dataset["bytes"] == len(DATA) and dataset["sha256"] == hashlib.sha256(DATA).hexdigest()


async def _cut_after(data: bytes, cut: int):
    yield data[:cut]
    raise ClientDisconnect


def test_dropped_connection_leaves_nothing_and_the_client_resumes(client, settings, auth, start, put):
    upload = start()
    chunks = parts_of(DATA)
    for index in (0, 1):
        assert put(upload["id"], index, chunks[index]).status_code == 200
    directory = settings.uploads_dir / upload["id"]
    with pytest.raises(ClientDisconnect):  # the connection drops half-way through part 2
        asyncio.run(receive_part(_cut_after(chunks[2], PART // 2), directory, 2, room=len(DATA)))
    assert len(files_under(directory)) == 2  # no half part, not even a hidden one
    seen = client.get(f"/v1/uploads/{upload['id']}", headers=auth()).json()
    have = {p["index"] for p in seen["parts"]}
    assert have == {0, 1}
    for index, chunk in enumerate(chunks):  # resume: only what is missing
        if index not in have:
            assert put(upload["id"], index, chunk).status_code == 200
    dataset = complete(client, auth, upload["id"], sha256=hashlib.sha256(DATA).hexdigest())
    assert dataset.status_code == 201, dataset.text


def test_missing_part_is_named(client, auth, start, put):
    upload = start()
    chunks = parts_of(DATA)
    for index in (0, 2, 3, 4, 5):
        put(upload["id"], index, chunks[index])
    refused = complete(client, auth, upload["id"], part_count=6)
    assert refused.status_code == 422 and "missing part 1 of 0..5" in refused.json()["detail"]
    assert client.get(f"/v1/uploads/{upload['id']}", headers=auth()).json()["status"] == "pending"
    put(upload["id"], 1, chunks[1])
    short = complete(client, auth, upload["id"], part_count=5)
    assert short.status_code == 422 and f"hold {len(DATA) - len(chunks[5])} bytes" in short.json()["detail"]
    assert complete(client, auth, upload["id"], part_count=6).status_code == 201


def test_a_huge_part_count_is_refused_at_once_and_missing_parts_stay_bounded(client, auth, start, put):
    upload = start()
    put(upload["id"], 0, parts_of(DATA)[0])
    began = time.monotonic()
    huge = complete(client, auth, upload["id"], part_count=1_000_000_000)
    assert time.monotonic() - began < 2
    assert huge.status_code == 422 and huge.json()["detail"].startswith("part_count: "), huge.text
    assert f"less than or equal to {MAX_PARTS}" in huge.json()["detail"]
    widest = complete(client, auth, upload["id"], part_count=MAX_PARTS)
    detail = widest.json()["detail"]
    assert widest.status_code == 422 and len(detail) < 300, detail
    assert "missing part 1, 2, 3, " in detail and f"and {MAX_PARTS - 21} more of 0..{MAX_PARTS - 1}" in detail
    began = time.monotonic()
    assert missing_parts({0, 2}, 10**12, shown=3) == ([1, 3, 4], 10**12 - 2)
    assert time.monotonic() - began < 0.1


def test_size_limits_are_checked_as_parts_arrive(client, settings, auth, start, put):
    over = client.post("/v1/uploads", headers=auth(),
                       json={"filename": "big.jsonl", "purpose": "domain", "bytes": settings.max_upload_bytes + 1})
    assert over.status_code == 413 and "larger than the limit" in over.json()["detail"]
    upload = start(size=3 * PART)
    assert put(upload["id"], 0, b"a" * PART).status_code == 200
    assert put(upload["id"], 1, b"b" * PART).status_code == 200
    declared = put(upload["id"], 2, b"c" * (PART + 1))  # refused from Content-Length, before reading
    assert declared.status_code == 413 and f"more than the {PART} bytes left" in declared.json()["detail"]
    streamed = put(upload["id"], 2, iter([b"c" * PART, b"c"]))  # chunked: refused as the bytes arrive
    assert streamed.status_code == 413 and f"more than the {PART} bytes left" in streamed.json()["detail"]
    assert len(files_under(settings.uploads_dir / upload["id"])) == 2  # the partial part was deleted
    seen = client.get(f"/v1/uploads/{upload['id']}", headers=auth()).json()
    assert [p["index"] for p in seen["parts"]] == [0, 1] and seen["received_bytes"] == 2 * PART
    assert put(upload["id"], 10_000, b"").status_code == 422  # past the last part index


def test_wrong_sha256_is_refused_and_the_upload_stays_open(client, settings, auth, start, put):
    upload = start()
    send_all(put, upload["id"])
    wrong = complete(client, auth, upload["id"], sha256="0" * 64)
    assert wrong.status_code == 422
    assert f"sha256 {hashlib.sha256(DATA).hexdigest()}, not the expected {'0' * 64}" in wrong.json()["detail"]
    assert list(settings.datasets_dir.iterdir()) == []
    assert client.get("/v1/datasets", headers=auth()).json() == []
    right = complete(client, auth, upload["id"], sha256=hashlib.sha256(DATA).hexdigest().upper())
    assert right.status_code == 201, right.text


def test_bad_names_and_bad_contents_get_field_messages(client, auth, start, put):
    bad = client.post("/v1/uploads", headers=auth(), json={"filename": "c.jsonl", "purpose": "training", "bytes": 1})
    assert bad.status_code == 422 and "purpose: must be one of domain, general, eval" in bad.json()["detail"]
    csv = client.post("/v1/uploads", headers=auth(), json={"filename": "c.csv", "purpose": "domain", "bytes": 1})
    assert csv.status_code == 422 and "filename: 'c.csv' must end with one of" in csv.json()["detail"]
    broken = b'{"text": "ok"}\n{"text": oops}\n'
    upload = start(size=len(broken))
    put(upload["id"], 0, broken)
    refused = complete(client, auth, upload["id"])
    assert refused.status_code == 422 and "corpus.jsonl, line 2: invalid JSON" in refused.json()["detail"]


def test_completing_lists_every_bad_line_as_a_whole_upload_does(client, settings, auth, start, put):
    broken = b'{"text": oops}\n{"text": "ok"}\n' + b"[1]\n" * (settings.max_bad_lines + 1)
    upload = start(size=len(broken))
    put(upload["id"], 0, broken)
    lines = complete(client, auth, upload["id"]).json()["detail"].splitlines()
    assert lines[:2] == ["corpus.jsonl, line 1: invalid JSON (Expecting value)",
                         "corpus.jsonl, line 3: expected a JSON object"]
    assert len(lines) == settings.max_bad_lines + 1 and lines[-1] == "and 2 more bad lines"


def test_other_owners_get_404(client, auth, start, put):
    upload = start()
    assert put(upload["id"], 0, parts_of(DATA)[0]).status_code == 200
    assert client.get(f"/v1/uploads/{upload['id']}", headers=auth("bob")).status_code == 404
    assert put(upload["id"], 1, b"x", owner="bob").status_code == 404
    assert complete(client, auth, upload["id"], owner="bob").status_code == 404
    assert client.post(f"/v1/uploads/{upload['id']}/cancel", headers=auth("bob")).status_code == 404
    assert client.get(f"/v1/uploads/{upload['id']}").status_code == 401
    assert client.get(f"/v1/uploads/{upload['id']}", headers=auth()).json()["status"] == "pending"


def _disk_full(*_args) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_fails_the_one_part_and_keeps_nothing_half_written(client, settings, auth, start, put,
                                                                     monkeypatch):
    upload = start()
    chunks = parts_of(DATA)
    put(upload["id"], 0, chunks[0])
    with monkeypatch.context() as patch:
        patch.setattr(HiddenFile, "write", _disk_full)
        full = put(upload["id"], 1, chunks[1])
    assert full.status_code == 507
    assert full.json()["detail"] == (f"disk full while writing part 1 of upload {upload['id']}; "
                                     "free space and retry this part")
    assert len(files_under(settings.uploads_dir / upload["id"])) == 1  # part 0 only, no temp file
    send_all(put, upload["id"])
    with monkeypatch.context() as patch:
        patch.setattr(HiddenFile, "write", _disk_full)
        full = complete(client, auth, upload["id"])
    assert full.status_code == 507 and "disk full while assembling upload" in full.json()["detail"]
    assert list(settings.datasets_dir.iterdir()) == []
    assert complete(client, auth, upload["id"]).status_code == 201  # the parts were kept


def test_full_disk_on_a_single_request_upload(settings, upload, monkeypatch):
    receive = _Receiver._part_data

    def full_once_the_file_is_open(self, data: bytes, start: int, end: int) -> None:
        if self._handle is not None:
            _disk_full()
        receive(self, data, start, end)

    monkeypatch.setattr(_Receiver, "_part_data", full_once_the_file_is_open)
    full = upload(DATA)
    assert full.status_code == 507 and "disk is full" in full.json()["detail"]
    assert settings.datasets_dir.is_dir() and list(settings.datasets_dir.iterdir()) == []


def test_completing_twice_gives_one_dataset(client, auth, start, put):
    upload = start()
    send_all(put, upload["id"])
    first = complete(client, auth, upload["id"])
    again = complete(client, auth, upload["id"])
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert len(client.get("/v1/datasets", headers=auth()).json()) == 1
    late = put(upload["id"], 0, b"x")
    assert late.status_code == 409 and "already completed" in late.json()["detail"]


def test_nothing_slips_in_while_an_upload_is_being_completed(client, auth, start, put, monkeypatch):
    upload = start()
    send_all(put, upload["id"])
    joining, release = threading.Event(), threading.Event()

    def slow_assemble(*args):
        joining.set()
        release.wait(30)
        return assemble(*args)

    monkeypatch.setattr("api.routes.uploads.assemble", slow_assemble)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(complete, client, auth, upload["id"])
        assert joining.wait(30)
        late_part = put(upload["id"], 0, b"x")
        second = complete(client, auth, upload["id"])
        cancel = client.post(f"/v1/uploads/{upload['id']}/cancel", headers=auth())
        release.set()
        assert first.result(60).status_code == 201
    for refused in (late_part, second, cancel):
        assert refused.status_code == 409 and "is being completed" in refused.json()["detail"]
    assert len(client.get("/v1/datasets", headers=auth()).json()) == 1


def test_cancel_removes_the_parts(client, settings, auth, start, put):
    upload = start()
    put(upload["id"], 0, parts_of(DATA)[0])
    cancelled = client.post(f"/v1/uploads/{upload['id']}/cancel", headers=auth())
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["parts"] == [] and not (settings.uploads_dir / upload["id"]).exists()
    assert put(upload["id"], 1, b"x").status_code == 409
    assert complete(client, auth, upload["id"]).status_code == 409


def test_expired_uploads_answer_404_and_are_purged(client, settings, auth, start, put):
    old = start()
    put(old["id"], 0, parts_of(DATA)[0])
    with client.app.state.services.sessions.begin() as db:
        db.execute(update(Upload).where(Upload.id == old["id"]).values(expires_at=utcnow() - timedelta(minutes=1)))
    gone = client.get(f"/v1/uploads/{old['id']}", headers=auth())
    assert gone.status_code == 404 and "expired" in gone.json()["detail"]
    assert put(old["id"], 1, b"x").status_code == 404
    assert (settings.uploads_dir / old["id"]).exists()
    start()  # creating an upload sweeps the expired ones away, parts and all
    assert not (settings.uploads_dir / old["id"]).exists()
    with client.app.state.services.sessions() as db:
        assert db.get(Upload, old["id"]) is None


def test_no_database_connection_is_held_while_a_part_streams(client, start, put, monkeypatch):
    engine = client.app.state.services.sessions.kw["bind"]
    held = []
    write = HiddenFile.write

    def watching(self, data: bytes) -> None:
        held.append(engine.pool.checkedout())
        write(self, data)

    upload = start()
    monkeypatch.setattr(HiddenFile, "write", watching)
    assert put(upload["id"], 0, parts_of(DATA)[0]).status_code == 200
    assert held and set(held) == {0}


def test_a_version_1_database_is_migrated_to_64_bit_sizes(settings):
    engine = make_engine(settings.db_url)
    settings.home.mkdir(parents=True, exist_ok=True)
    create_version_8_tables(engine)  # the models' newer tables and columns come from later revisions
    with engine.begin() as conn:  # the shape version 1 left behind
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE datasets ALTER COLUMN bytes TYPE INTEGER, "
                              "ALTER COLUMN approx_tokens TYPE INTEGER"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (1)"))
    sessions = init_db(engine)
    with sessions.begin() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
        db.add(Dataset(id="ds_big", owner="alice", purpose="domain", filename="big.jsonl", path="/nowhere",
                       bytes=5 * 2**30, documents=1, approx_tokens=3 * 2**30, sha256="0" * 64))
    with sessions() as db:
        assert db.get(Dataset, "ds_big").bytes == 5 * 2**30
    engine.dispose()


@pytest.mark.parametrize(("field", "value"), [("filename", "a" * 300 + ".jsonl"), ("filename", "a\x00b.jsonl"),
                                              ("filename", "a\nb.jsonl"), ("mime_type", "text/plain\x00"),
                                              ("purpose", "domain\x00")])
def test_absurd_names_in_parts_are_refused_and_leave_nothing(client, settings, auth, field, value):
    body = {"filename": "c.jsonl", "purpose": "domain", "bytes": 10} | {field: value}
    response = client.post("/v1/uploads", headers=auth(), json=body)
    assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}: "), response.text
    assert files_under(settings.uploads_dir) == [] and files_under(settings.datasets_dir) == []
