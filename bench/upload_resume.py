"""`upload_resume_ok`: a large corpus uploaded in parts, once without a break and once cut at 50% and resumed.

    python bench/upload_resume.py [--mb 200] [--part-mb 8]

Starts the API in this process (uvicorn on 127.0.0.1, a free port, SQLite in a temporary MOL_HOME), writes a
generated JSONL corpus of the asked size, uploads it in parts (POST /v1/uploads, PUT each part, complete),
then again with the connection dropped half-way through the part that holds the file's middle byte (the
50% mark itself at the defaults, 200 MiB in 8 MiB parts): the client asks the server what it holds
(GET /v1/uploads/{id}) and sends only the rest. Prints, as JSON, {"upload_resume_ok": both datasets' sha256
equal hashlib's over the file, the timings, the bytes}.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from api.app import create_app  # noqa: E402
from store.settings import Settings  # noqa: E402

PART = 8 * 2**20  # the dashboard's part size
TOKEN = "bench-token"
WORDS = ("the river model light north stone garden window paper quiet music winter table letter small green "
         "open under over after before city morning evening story road").split()


def write_corpus(path: Path, size: int) -> str:
    """Write a JSONL corpus ({"text": ...} per line) of exactly ``size`` bytes (>= 64); returns its sha256."""
    words = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(150)) for i in range(97)]
    digest, written, number = hashlib.sha256(), 0, 0
    with path.open("wb") as out:
        while True:
            line = json.dumps({"text": f"document {number}: {words[number % len(words)]}"}).encode() + b"\n"
            if size - written - len(line) < 64:  # the last line pads the file to its exact size
                line = b'{"text": "' + b"z" * (size - written - 13) + b'"}\n'
            out.write(line)
            digest.update(line)
            written, number = written + len(line), number + 1
            if written >= size:
                return digest.hexdigest()


@contextlib.contextmanager
def serve(home: Path, max_bytes: int) -> Iterator[str]:
    """The API (uvicorn, in a thread of this process) on a free loopback port; yields its base URL."""
    settings = Settings(home=home, tokens=f"bench:{TOKEN}", demo_model=False, max_upload_mb=max_bytes / 2**20 + 1)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, enqueue=lambda _job: None), log_level="warning",
                                           access_log=False))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class Dropped(Exception):
    """Raised inside a request body: the client goes away mid-part, as a cut connection does."""


def _ok(response: httpx.Response) -> dict:
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                           f"{response.text}")
    return response.json()


def _cut_body(head: bytes) -> Iterator[bytes]:
    yield head
    raise Dropped


def send_parts(client: httpx.Client, upload_id: str, path: Path, indices: list[int], part: int,
               cut: int | None = None) -> int:
    """Send parts ``indices`` of ``path``; with ``cut`` (a byte offset) the connection drops there, mid-part,
    and sending stops. Returns the bytes sent."""
    sent = 0
    with path.open("rb") as source:
        for index in indices:
            source.seek(index * part)
            data = source.read(part)
            url = f"/v1/uploads/{upload_id}/parts/{index}"
            if cut is not None and index * part + len(data) > cut:
                with contextlib.suppress(Dropped):
                    client.put(url, content=_cut_body(data[:cut - index * part]))
                    raise RuntimeError("a part cut off half-way was answered as if whole")
                return sent + cut - index * part
            _ok(client.put(url, content=data, headers={"Content-Type": "application/octet-stream"}))
            sent += len(data)
    return sent


def upload(client: httpx.Client, path: Path, size: int, part: int, cut: int | None = None) -> tuple[dict, int]:
    """(the Dataset, bytes sent) for ``path`` uploaded in parts; with ``cut`` the connection drops there first
    and the upload resumes from the parts the server says it holds."""
    created = _ok(client.post("/v1/uploads", json={"filename": path.name, "purpose": "domain", "bytes": size}))
    count = max(1, math.ceil(size / part))
    todo, sent = list(range(count)), 0
    if cut is not None:
        sent = send_parts(client, created["id"], path, todo, part, cut)
        held = {p["index"] for p in _ok(client.get(f"/v1/uploads/{created['id']}"))["parts"]}
        todo = [index for index in todo if index not in held]
    sent += send_parts(client, created["id"], path, todo, part)
    done = client.post(f"/v1/uploads/{created['id']}/complete", json={"part_count": count})
    return _ok(done), sent


def middle_of_middle_part(size: int, part: int) -> int:
    """The byte half-way through the part holding the file's middle byte (the middle itself when the part
    count is odd, as for 200 MiB in 8 MiB parts)."""
    start = size // 2 // part * part
    return start + min(part, size - start) // 2


def upload_resume_ok(size_bytes: int = 200 * 2**20, part_bytes: int = PART, workdir: Path | None = None) -> dict:
    """{"upload_resume_ok": the uninterrupted and the resumed upload both give the file's sha256,
    "seconds_whole", "seconds_resumed", "bytes", "bytes_sent_resumed"}."""
    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="upload-resume-")))
        corpus = root / "corpus.jsonl"
        expected = write_corpus(corpus, size_bytes)
        base = stack.enter_context(serve(root / "home", size_bytes))
        client = stack.enter_context(httpx.Client(base_url=base, timeout=600,
                                                  headers={"Authorization": f"Bearer {TOKEN}"}))
        start = time.perf_counter()
        whole, _ = upload(client, corpus, size_bytes, part_bytes)
        middle = time.perf_counter()
        cut = middle_of_middle_part(size_bytes, part_bytes)
        resumed, sent = upload(client, corpus, size_bytes, part_bytes, cut=cut)
        end = time.perf_counter()
    return {"upload_resume_ok": whole["sha256"] == resumed["sha256"] == expected
            and whole["bytes"] == resumed["bytes"] == size_bytes,
            "seconds_whole": round(middle - start, 3), "seconds_resumed": round(end - middle, 3),
            "bytes": size_bytes, "bytes_sent_resumed": sent}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=200, help="corpus size in MiB")
    parser.add_argument("--part-mb", type=float, default=PART / 2**20, help="part size in MiB")
    args = parser.parse_args()
    print(json.dumps(upload_resume_ok(int(args.mb * 2**20), int(args.part_mb * 2**20))))
