"""No client can stall the API: slow downloads, uploads and SSE streams hold no database connection, an aborted
download leaves no thread, open file or merged export behind, and uploads are validated in bounded memory.

A real uvicorn server (in a thread of the test process, so its threads and open files can be inspected) and raw
sockets with a tiny receive buffer that read a status line and then nothing.
"""

import asyncio
import contextlib
import io
import os
import socket
import struct
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from api import tarball
from api.app import create_app
from api.auth import create_token
from api.checks.dataset_contents import inspect_dataset
from api.services import checkpoint_downloads
from api.upload import BadUpload, receive_upload
from api.upload_parts import receive_part
from store.db import Job
from tests.live_server import serving

POOL = 2  # connections in the pool, and no overflow: N + 5 slow clients are far more than it holds
WAIT = 8  # seconds a request waits for a pooled connection before it fails
TOKEN = "tok-alice"  # conftest's alice
WEIGHTS = 16 * 2**20  # incompressible bytes: far more than the socket buffers, so a client that reads nothing stalls


@pytest.fixture
def server(settings, tmp_path):
    """(base URL, app) of a real server on a small pool that times out quickly."""
    settings = settings.model_copy(update={"db_pool_size": POOL, "db_max_overflow": 0, "db_pool_timeout_s": WAIT})
    app = create_app(settings, enqueue=lambda _job_id: None)
    with serving(app) as base:
        yield base, app


def add_checkpoint(app, adapter: bool = False) -> tuple[str, Path]:
    """A job of alice's with checkpoint step-1 whose model holds WEIGHTS random bytes; (job id, model dir)."""
    svc = app.state.services
    with svc.sessions.begin() as db:
        job = Job(owner="alice", name="big", spec={"base_model": "tiny"}, max_steps=1, status="succeeded")
        db.add(job)
    model = svc.settings.runs_dir / job.id / "checkpoints" / "step-1" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(os.urandom(WEIGHTS))
    if adapter:
        (model / "adapter_config.json").write_text("{}")
    return job.id, model


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.settimeout(15)
    conn.connect((host, int(port)))
    return conn


def slow_download(base: str, path: str, accept: str = "*/*", token: str = TOKEN) -> socket.socket:
    """A client that sends the request, reads the status line, then reads nothing more."""
    conn = connect(base)
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: {accept}\r\n\r\n"
                 .encode())
    status = conn.recv(12)
    assert status == b"HTTP/1.1 200", status + conn.recv(2000)
    return conn


def slow_upload(base: str, token: str) -> socket.socket:
    """A client that starts a multipart upload (60 kB, under the tests' limit), sends 1 kB, then nothing more."""
    conn = connect(base)
    head = (b'--b0und\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n'
            + b'{"text": "a river"}\n' * 50)
    conn.sendall(f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                 f"Content-Type: multipart/form-data; boundary=b0und\r\nContent-Length: 60000\r\n\r\n".encode()
                 + head)
    return conn


def abort(conn: socket.socket) -> None:
    """Close at once with a reset, as a client that is killed does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def open_files_under(directory: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                found.append(target)
    return found


def threads_in(module_file: str) -> list[str]:
    """Threads whose stack is inside ``module_file`` right now."""
    stuck = []
    for thread_id, frame in sys._current_frames().items():
        while frame is not None:
            if frame.f_code.co_filename == module_file:
                stuck.append(str(thread_id))
                break
            frame = frame.f_back
    return stuck


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while (result := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def test_slow_downloaders_uploaders_and_streams_hold_no_connection_and_others_are_served_fast(server):
    base, app = server
    job_id, _ = add_checkpoint(app)
    with app.state.services.sessions.begin() as db:
        token = create_token(db, "alice")  # a stored token: checking it reads the database
        db.add(watched := Job(owner="alice", name="live", spec={"base_model": "tiny"}, max_steps=1))
    path = f"/v1/jobs/{job_id}/checkpoints/step-1/download"
    clients = [slow_download(base, path, token=token) for _ in range(POOL + 5)]
    clients += [slow_download(base, f"/v1/jobs/{watched.id}/events", "text/event-stream", token)
                for _ in range(POOL + 5)]
    clients += [slow_upload(base, token) for _ in range(POOL + 5)]
    time.sleep(0.5)  # the uploads' handlers are waiting for the rest of their bodies
    pool = app.state.services.sessions.kw["bind"].pool
    try:
        assert pool.checkedout() <= 1  # at most the one tail of the watched job, polling in short sessions
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for url in (f"{base}/v1/jobs", f"{base}/healthz"):
            started = time.perf_counter()
            response = httpx.get(url, headers=headers, timeout=2 * WAIT)
            took = time.perf_counter() - started
            assert response.status_code == 200, response.text
            assert took < WAIT / 2, f"{url}: {took:.2f} s while {len(clients)} slow clients were held"  # no pool wait
        assert pool.checkedout() <= 1
    finally:
        for conn in clients:
            abort(conn)


def test_an_aborted_merged_download_leaves_no_thread_open_file_or_export(server, monkeypatch):
    base, app = server
    job_id, model = add_checkpoint(app, adapter=True)
    payload, exported = os.urandom(WEIGHTS), []

    def export_checkpoint(checkpoint, out, merged=False):  # stands in for the merge: a big model in the scratch
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(payload)
        exported.append(out)
        return out

    monkeypatch.setattr(checkpoint_downloads, "export_checkpoint", export_checkpoint)
    exports = app.state.services.settings.exports_dir
    (stale := exports / "left-by-a-dead-process").mkdir(parents=True)
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    path = f"/v1/jobs/{job_id}/checkpoints/step-1/download?format=merged"
    abort(slow_download(base, path))
    assert exported and exported[0].is_relative_to(exports)
    assert wait_for(lambda: list(exports.iterdir())) == []  # the merged model is gone, and the stale scratch
    assert wait_for(lambda: open_files_under(exports) + open_files_under(model)) == []
    assert wait_for(lambda: threads_in(checkpoint_downloads.__file__) + threads_in(tarball.__file__)) == []
    assert tarball.PRODUCERS.borrowed_tokens == 0  # the download gave its producer thread back

    # read to the end: the whole tree comes back, and its scratch is removed too
    body = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).content
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        assert tar.getnames() == [f"{job_id}-step-1-merged", f"{job_id}-step-1-merged/model.safetensors"]
        assert tar.extractfile(f"{job_id}-step-1-merged/model.safetensors").read() == payload
    assert wait_for(lambda: list(exports.iterdir())) == []


class _Request:
    """Just what receive_upload reads of a request: headers and the body as a stream of chunks."""

    def __init__(self, boundary: str, chunks) -> None:
        self.headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        self._chunks = chunks

    async def stream(self):
        for chunk in self._chunks:
            yield chunk


def multipart_chunks(boundary: str, lines: int, line: bytes):
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndomain\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    for _ in range(lines // 256):
        yield line * 256
    yield f"\r\n--{boundary}--\r\n".encode()


def peak_bytes(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_uploads_are_received_and_validated_in_bounded_memory(tmp_path):
    line = b'{"text": "' + b"a river runs under the stone bridge " * 7 + b'"}\n'  # ~260 bytes
    lines = 64_000  # ~16 MiB
    size = lines // 256 * 256 * len(line)
    received = []
    request = _Request("b0und", multipart_chunks("b0und", lines, line))
    peak = peak_bytes(lambda: received.append(asyncio.run(receive_upload(request, tmp_path, 2 * size))))
    assert received[0].bytes == size and received[0].path.stat().st_size == size
    assert peak < 4 * 2**20, f"receiving {size} bytes peaked at {peak} bytes"

    stored = received[0].path.rename(tmp_path / "big.jsonl")
    counted = []
    peak = peak_bytes(lambda: counted.append(inspect_dataset(stored, "domain", "big.jsonl", max_bad_lines=20)))
    assert counted[0][0] == lines // 256 * 256
    assert peak < 4 * 2**20, f"validating {size} bytes peaked at {peak} bytes"

    async def chunks():
        for _ in range(size // 2**16):
            yield b"x" * 2**16

    peak = peak_bytes(lambda: received.append(asyncio.run(receive_part(chunks(), tmp_path / "parts", 0, size))))
    assert received[1].bytes == size // 2**16 * 2**16 and peak < 4 * 2**20, peak


def test_an_evaluation_set_is_validated_in_bounded_memory(tmp_path):
    line = b'{"question": "' + b"what runs under the stone bridge? " * 4 + b'", "answer": "a river"}\n'
    path = tmp_path / "qa.jsonl"
    path.write_bytes(line * (8 * 2**20 // len(line)))  # ~8 MiB: kept whole, its pairs would take ~14 MiB
    counted = []
    peak = peak_bytes(lambda: counted.append(inspect_dataset(path, "eval", "qa.jsonl", max_bad_lines=20)))
    assert counted[0][0] == 8 * 2**20 // len(line)
    assert peak < 4 * 2**20, f"validating an 8 MiB evaluation set peaked at {peak} bytes"


@pytest.mark.parametrize("form", [
    b"".join(b'--b0und\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n' % i + b"x" * 1000 + b"\r\n"
             for i in range(100)),  # 100 small fields
    b'--b0und\r\nContent-Disposition: form-data; name="purpose"\r\nX-Pad: ' + b"x" * 100_000 + b"\r\n\r\ndomain\r\n",
], ids=["fields", "header"])
def test_what_a_multipart_body_keeps_in_memory_is_bounded(tmp_path, form):
    """Only the file goes to disk; text fields and part headers are held, so they have one limit together."""
    request = _Request("b0und", iter([form, b"--b0und--\r\n"]))
    with pytest.raises(BadUpload, match=r"^body: "):  # python-multipart bounds each header line itself
        asyncio.run(receive_upload(request, tmp_path, 2**20))
    assert list(tmp_path.iterdir()) == []
