"""The abuse mix of bench/api_load.py: what one owner (``mallory``) throws at the API while another (``bench``) works.

mallory sends oversized JSON bodies (without a token and with one, announced by Content-Length and chunked),
completions with huge prompts, a burst of side tasks (interpolations) and keeps the most webhook endpoints she may
have, each pointing at a server that accepts and never answers; each of her cancelled jobs gives every one of them
a delivery to try. Meanwhile bench submits and polls jobs, cancels one now and then and times its webhook's
delivery, and, once mallory's side tasks are queued, submits a training job and times its wait for a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

ATTACKER = "mallory"
ATTACKER_TOKEN = "mallory-token"
MiB = 2**20


@dataclass
class Outcomes:
    """Status codes (or ``cut``: the server closed the connection before answering) of each kind of abuse."""

    by_kind: dict[str, Counter] = field(default_factory=dict)

    def add(self, kind: str, outcome: int | str) -> None:
        self.by_kind.setdefault(kind, Counter())[str(outcome)] += 1

    @property
    def server_errors(self) -> int:
        return sum(n for c in self.by_kind.values() for k, n in c.items() if k.isdigit() and int(k) >= 500)

    def summary(self) -> dict[str, dict[str, int]]:
        return {kind: dict(sorted(c.items())) for kind, c in sorted(self.by_kind.items())}


# ---------------------------------------------------------------- webhook servers


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.arrivals[json.loads(body)["data"]["job_id"]] = time.monotonic()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def webhook_receiver():
    """(URL, {job id: monotonic arrival time}) of a receiver on loopback that answers 204 at once."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.arrivals = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", server.arrivals
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def dead_endpoint():
    """The URL of a loopback server that accepts connections and never answers (a webhook receiver gone silent)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/never"
    finally:
        listener.close()
        for conn in held:
            conn.close()


# ---------------------------------------------------------------- mallory


FILLER_HEAD, FILLER_TAIL = b'{"name": "', b'"}'


def _filler(size: int, chunk: int = MiB):
    """A JSON object holding a ``size``-byte string, in chunks (``size + FILLER_EXTRA`` bytes in all)."""
    yield FILLER_HEAD
    for sent in range(0, size, chunk):
        yield b"x" * min(chunk, size - sent)
    yield FILLER_TAIL


FILLER_EXTRA = len(FILLER_HEAD) + len(FILLER_TAIL)


async def _streamed(size: int):
    """:func:`_filler` as an async generator: httpx sends it chunked, without Content-Length."""
    for chunk in _filler(size):
        yield chunk


async def oversized_body(client: httpx.AsyncClient, size: int, token: str | None, chunked: bool,
                         outcomes: Outcomes) -> None:
    """POST /v1/jobs with a ``size``-byte body; records the status, or ``cut``."""
    kind = f"oversized_{'token' if token else 'anonymous'}_{'chunked' if chunked else 'length'}"
    headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}
    headers["Content-Type"] = "application/json"
    if not chunked:  # announced, and streamed as the API reads it: the bench never holds the body itself
        headers["Content-Length"] = str(size + FILLER_EXTRA)
    try:
        response = await client.post("/v1/jobs", content=_streamed(size), headers=headers)
        outcomes.add(kind, response.status_code)
    except httpx.TransportError:
        outcomes.add(kind, "cut")


async def huge_prompt(client: httpx.AsyncClient, model: str, chars: int, outcomes: Outcomes) -> None:
    """A completion of one token after a ``chars``-character prompt."""
    body = {"model": model, "prompt": "the river runs " * (chars // 15), "max_tokens": 1}
    headers = {"Authorization": f"Bearer {ATTACKER_TOKEN}"}
    try:
        response = await client.post("/v1/completions", json=body, headers=headers)
        outcomes.add(f"prompt_{chars // 1000}k_chars", response.status_code)
    except httpx.TransportError:
        outcomes.add(f"prompt_{chars // 1000}k_chars", "cut")


async def side_task_burst(client: httpx.AsyncClient, job_id: str, count: int, outcomes: Outcomes) -> None:
    """``count`` interpolation requests at once on ``job_id``'s final checkpoint, each with other α (no two alike)."""
    headers = {"Authorization": f"Bearer {ATTACKER_TOKEN}"}

    async def one(i: int) -> None:
        body = {"checkpoint": "best", "alphas": [0.0, round(0.001 * (i + 1), 3), 1.0]}
        response = await client.post(f"/v1/jobs/{job_id}/interpolations", json=body, headers=headers)
        outcomes.add("side_tasks", response.status_code)

    await asyncio.gather(*(one(i) for i in range(count)))


async def register_dead_webhooks(client: httpx.AsyncClient, url: str, outcomes: Outcomes, most: int = 500) -> int:
    """Registers endpoints at ``url`` until the API refuses one (or ``most``); how many it took."""
    headers = {"Authorization": f"Bearer {ATTACKER_TOKEN}"}
    for taken in range(most):
        response = await client.post("/v1/webhooks", json={"url": url}, headers=headers)
        outcomes.add("webhook_registrations", response.status_code)
        if response.status_code != 201:
            return taken
    return most


async def submit_and_cancel(client: httpx.AsyncClient, spec: dict, token: str) -> tuple[str, int, float]:
    """(job id, the cancel's status, when the cancel answered): a job submitted and cancelled while queued, which
    gives each of its owner's endpoints a ``job.cancelled`` delivery."""
    headers = {"Authorization": f"Bearer {token}"}
    job_id = (await client.post("/v1/jobs", json=spec, headers=headers)).json()["id"]
    response = await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    return job_id, response.status_code, time.monotonic()


async def wait_for(client: httpx.AsyncClient, job_id: str, token: str, statuses: set[str], timeout: float) -> str:
    """Polls the job until its status is one of ``statuses`` (or ``timeout`` passes); the last status seen."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline, status = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        status = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()["status"]
        if status in statuses:
            break
        await asyncio.sleep(0.1)
    return status


async def wait_for_status(base: str, job_id: str, token: str, timeout: float) -> str:
    """The job's status once it has ended (or the last seen after ``timeout``)."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        return await wait_for(client, job_id, token, {"succeeded", "failed", "cancelled"}, timeout)
