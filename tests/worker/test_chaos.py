"""Chaos: real Celery worker processes on PostgreSQL and Redis, killed and cut off. Each test asserts the final
state (no duplicate or missing step) and the bound within which the job's status told the truth.

Fast settings: heartbeats (and the API's lease sweep) every 0.5 s; a lease dies after MOL_LEASE_TIMEOUT_S = 10 s
without one (a runner importing torch on a loaded 2-core machine can miss heartbeats for ~5 s), or at once when
its process is gone (the killed workers here: the runner child sees its parent gone and exits).
Tests that stop Redis start a private redis-server on a free port; the shared one on 6379 is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis
import sqlalchemy

from api.app import create_app
from store.db import Job, MetricPoint, init_db, make_engine
from store.settings import Settings
from tests.empty_database import empty_database
from tests.live_server import serving
from tests.worker.conftest import TOKEN

LEASE_TIMEOUT_S, HEARTBEAT_S = 10.0, 0.5
SLACK_S = 15.0  # process exits and polls on a loaded 2-core machine
ROOT = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own, without persistence: a restart comes back empty."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder, self.proc = free_port(), folder, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.proc.poll() is None:
        server.kill()


@pytest.fixture
def service_env(service_env, postgres_url, request):
    """The harness's environment on PostgreSQL (emptied for each test), fast leases, and the private Redis if the
    test asks for one."""
    engine = sqlalchemy.create_engine(postgres_url)
    empty_database(engine)
    engine.dispose()
    env = service_env | {"MOL_DATABASE_URL": postgres_url, "MOL_LEASE_TIMEOUT_S": str(LEASE_TIMEOUT_S),
                         "MOL_HEARTBEAT_S": str(HEARTBEAT_S)}
    if "private_redis" in request.fixturenames:
        env["MOL_BROKER_URL"] = request.getfixturevalue("private_redis").url
    return env


def job(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def train_steps(client, job_id: str) -> list[int]:
    return [p["step"] for p in client.get(f"/v1/jobs/{job_id}/metrics").json() if "train/loss" in p]


def ended(client, job_id: str, wait_for, timeout: float = 180) -> dict:
    return wait_for(lambda: (j := job(client, job_id))["status"] in FINAL and j, timeout=timeout, what=f"{job_id} end")


def worker_of(sessions, job_id: str, procs: list[subprocess.Popen]) -> subprocess.Popen:
    """The worker process whose runner child holds the job's lease."""
    with sessions() as db:
        runner = int(db.get(Job, job_id).lease_owner.rsplit(":", 1)[1])
    parent = int(Path(f"/proc/{runner}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return next(p for p in procs if p.pid == parent)


def test_sigkilled_workers_job_shows_the_loss_then_resumes_without_gaps(api, workers, submit, wait_for):
    """The only worker killed: the job shows ``queued`` with the reason within the bound and /healthz says degraded;
    then, with a second worker running, the one that took the job over killed: it resumes there. Every step once."""
    only = workers.start()
    # a tiny model trains ~50 steps a second here: enough steps that the job still runs when each kill lands
    job_id = submit(max_steps=200, save_every=5, eval_every=200)
    wait_for(lambda: job(api, job_id)["step"] >= 4, what="step 4")
    only.send_signal(signal.SIGKILL)
    only.wait(10)
    gone = time.monotonic()
    wait_for(lambda: job(api, job_id)["status"] == "queued", timeout=LEASE_TIMEOUT_S + HEARTBEAT_S + SLACK_S,
             every=0.1, what="the lease loss to show")
    assert time.monotonic() - gone < LEASE_TIMEOUT_S + HEARTBEAT_S + SLACK_S
    lost = [e["message"] for e in api.get(f"/v1/jobs/{job_id}/events").json() if e["kind"] == "lease_lost"]
    assert len(lost) == 1 and lost[0].startswith("lease lost: worker ")
    health = wait_for(lambda: (h := api.get("/healthz").json())["status"] == "degraded" and h,
                      timeout=LEASE_TIMEOUT_S + SLACK_S, what="healthz to say no worker")
    assert health["reasons"] == [f"1 job(s) waiting and no worker seen in the last {LEASE_TIMEOUT_S:g} s"]

    workers.start()
    workers.start()
    resumed_from = wait_for(lambda: (j := job(api, job_id))["attempt"] == 2 and j["status"] == "running" and j,
                            what="the resume")["step"]
    wait_for(lambda: job(api, job_id)["step"] >= resumed_from + 5, every=0.05, what="5 steps after the resume")
    killed = worker_of(api.app.state.services.sessions, job_id, workers.procs)
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    gone = time.monotonic()
    # re-queued and sent again by the API's sweeper, then a fresh runner (a new Python importing torch) takes it
    wait_for(lambda: job(api, job_id)["attempt"] == 3, timeout=LEASE_TIMEOUT_S + 2 * SLACK_S, what="the second resume")
    assert time.monotonic() - gone < LEASE_TIMEOUT_S + 2 * SLACK_S
    done = ended(api, job_id, wait_for)
    assert done["status"] == "succeeded", done["error"]
    assert train_steps(api, job_id) == list(range(1, 201))  # no duplicate, no missing step


def test_redis_killed_and_restarted_empty_loses_no_job(api, workers, submit, wait_for, private_redis):
    workers.start()
    running = submit(max_steps=16, save_every=4, eval_every=16)
    waiting = submit(max_steps=4, save_every=4, eval_every=4)  # its message sits in Redis behind the first job
    wait_for(lambda: job(api, running)["step"] >= 3, what="step 3")
    private_redis.kill()
    private_redis.start()  # empty: the waiting job's message is gone
    first = ended(api, running, wait_for)
    assert first["status"] == "succeeded", first["error"]
    finished = time.monotonic()
    second = ended(api, waiting, wait_for, timeout=2 * LEASE_TIMEOUT_S + 5 + SLACK_S + 30)
    assert second["status"] == "succeeded", second["error"]
    assert time.monotonic() - finished < 2 * LEASE_TIMEOUT_S + 5 + SLACK_S + 30  # re-sent by the next reconcile
    assert train_steps(api, running) == list(range(1, 17)) and train_steps(api, waiting) == [1, 2, 3, 4]


def _start_api(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mol_cli", "api", "--port", str(port)], env=os.environ | env,
                            cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.1)


def _read_stream(client: httpx.Client, job_id: str, last_id: str | None, stop_after: int | None) -> SimpleNamespace:
    """Training steps and the last SSE id read, and how the stream ended: ``end`` (its end event), ``error`` (its
    error event), ``cut`` (the connection broke, or an answer that is no stream) or ``stopped`` (we stopped after
    ``stop_after`` training steps)."""
    read = SimpleNamespace(steps=[], last_id=last_id, how=None, status=None)
    headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
    kind = None
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/metrics", headers=headers) as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("id:"):
                    read.last_id = line[3:].strip()
                elif line.startswith("data:") and kind == "metric":
                    point = json.loads(line[5:])
                    read.steps += [point["step"]] if "train/loss" in point else []
                    if stop_after and len(read.steps) >= stop_after:
                        read.how = "stopped"
                        return read
                elif line.startswith("data:") and kind == "end":
                    read.how, read.status = "end", json.loads(line[5:])["status"]
                    return read
                elif line.startswith("data:") and kind == "error":
                    read.how = "error"
                    return read
    except (httpx.RemoteProtocolError, httpx.ReadError):
        read.how = "cut"
        return read
    read.how = "cut"  # the body ended without an end event
    return read


def test_api_killed_mid_stream_ends_the_stream_and_a_new_api_serves_the_rest(service_env, workers, submit,
                                                                            wait_for, tmp_path):
    port = free_port()
    env = service_env | {"MOL_STREAM_KEEPALIVE_S": "1"}
    server = _start_api(env, port, tmp_path / "api.log")
    workers.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=httpx.Timeout(10, read=30))
    steps = 250  # ~50 a second here: the job still runs when the API is killed half a second into the 2nd stream
    job_id = submit(max_steps=steps, save_every=50, eval_every=steps)
    first = _read_stream(client, job_id, None, stop_after=3)
    assert first.how == "stopped"
    cut = SimpleNamespace()

    def kill_soon() -> None:  # the API dies while the client is reading the stream
        time.sleep(0.5)
        server.send_signal(signal.SIGKILL)
        cut.at = time.monotonic()

    killer = threading.Thread(target=kill_soon)
    killer.start()
    second = _read_stream(client, job_id, first.last_id, stop_after=None)
    killer.join()
    server.wait(10)
    assert second.how == "cut" and time.monotonic() - cut.at < 5  # the client sees the end at once
    server = _start_api(env, port, tmp_path / "api.log")
    try:
        assert job(client, job_id)["status"] in ("running", "succeeded")
        rest = _read_stream(client, job_id, second.last_id, stop_after=None)
        assert rest.how == "end" and rest.status == "succeeded"
        assert first.steps + second.steps + rest.steps == list(range(1, steps + 1))  # each point once, across 3 streams
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        client.close()


def test_submit_while_redis_is_down_makes_no_job_and_a_retry_makes_one(api, submit, private_redis):
    datasets = {d["purpose"]: d["id"] for d in api.get("/v1/datasets").json()}  # uploaded by ``submit``
    spec = {"name": "r", "base_model": "tiny", "domain_data": [datasets["domain"]],
            "general_data": [datasets["general"]], "max_steps": 2, "seq_len": 64}
    key = {"Idempotency-Key": "retry-1"}
    private_redis.kill()
    refused = api.post("/v1/jobs", json=spec, headers=key)
    assert refused.status_code == 503 and "no job was created" in refused.json()["detail"]
    assert api.get("/v1/jobs").json()["data"] == []
    private_redis.start()
    made = api.post("/v1/jobs", json=spec, headers=key)
    again = api.post("/v1/jobs", json=spec, headers=key)
    assert (made.status_code, again.status_code) == (201, 200) and made.json()["id"] == again.json()["id"]
    assert [j["id"] for j in api.get("/v1/jobs").json()["data"]] == [made.json()["id"]]


def test_cancel_racing_the_lease_never_trains_under_a_cancelled_label(api, workers, submit, wait_for):
    workers.start()
    at_once = submit(max_steps=200)
    assert api.post(f"/v1/jobs/{at_once}/cancel").json()["status"] == "cancelled"  # queued: ended at once
    leased = submit(max_steps=200, save_every=100, eval_every=100)
    behind = submit(max_steps=200)
    wait_for(lambda: job(api, leased)["status"] == "running", every=0.05, what="the lease")
    asked = time.monotonic()
    for job_id in (leased, behind):  # one just leased (maybe before step 1), one still queued behind it
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert job(api, behind)["status"] == "cancelled"
    done = ended(api, leased, wait_for, timeout=5 + SLACK_S)
    assert done["status"] == "cancelled" and time.monotonic() - asked < 5 + SLACK_S  # MOL_CANCEL_GRACE_S = 5
    steps = done["step"]
    time.sleep(2 * HEARTBEAT_S + 1)  # the stale deliveries of the other two reach the worker meanwhile
    for job_id in (at_once, behind):
        assert (job(api, job_id)["status"], job(api, job_id)["attempt"], train_steps(api, job_id)) == (
            "cancelled", 0, [])  # never leased after the cancel
    assert job(api, leased)["step"] == steps and job(api, leased)["status"] == "cancelled"  # nothing trains on



class CuttableProxy:
    """A TCP proxy on 127.0.0.1 (a free port) in front of ``target``, a thread per direction of each connection:
    ``cut()`` breaks every open connection and refuses new ones (accepted, then closed at once) until ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.refusing, self.pairs = target, False, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                if self.refusing:
                    raise OSError("cut")
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):  # one side gone: the other sees it at once
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.refusing = True
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv; close alone would not

    def restore(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.listener.close()
        self.cut()


def _follow(base: str, job_id: str) -> SimpleNamespace:
    """The job's metric stream read to its end event, opened again with Last-Event-ID whenever a connection ends
    without it: the steps read, and how each connection ended (see ``_read_stream``)."""
    steps, hows, last_id = [], [], None
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=httpx.Timeout(10, read=30)) as client:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            read = _read_stream(client, job_id, last_id, stop_after=None)
            steps, last_id = steps + read.steps, read.last_id
            hows.append(read.how)
            if read.how == "end":
                break
            time.sleep(0.25)
    return SimpleNamespace(steps=steps, hows=hows)


def test_a_database_blip_ends_no_stream_silently_and_loses_no_row(postgres_url, tmp_path):
    """PostgreSQL cut off for 3 s behind a proxy while streams are open on two APIs: on one (MOL_STREAM_DB_OUTAGE_S
    30) every stream waits the blip out and delivers the rest; on the other (1 s) every stream ends with an error
    event, and the reconnection with Last-Event-ID (refused while the database is away) delivers the rest. Each
    stream's rows, across its connections, are every step once, in order. Rows are written behind the proxy."""
    engine = sqlalchemy.create_engine(postgres_url)
    empty_database(engine)
    engine.dispose()
    writer = init_db(make_engine(postgres_url))  # the runner's side: not behind the proxy
    with writer.begin() as db:
        db.add(Job(id="job_blip", owner="tester", name="b", spec={}, max_steps=100, status="running"))
    proxy = CuttableProxy(("127.0.0.1", 5432))
    proxied = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    apps = [create_app(Settings(home=tmp_path / f"home-{outage}", database_url=proxied, demo_model=False,
                                tokens=f"tester:{TOKEN}", stream_poll_s=0.05, stream_keepalive_s=1,
                                stream_db_outage_s=outage), enqueue=lambda _job_id: None) for outage in (30, 1)]
    steps, reads = 100, {}
    with serving(apps[0]) as waits, serving(apps[1]) as gives_up:
        readers = [threading.Thread(target=lambda key=(base, i): reads.__setitem__(key, _follow(key[0], "job_blip")))
                   for base in (waits, gives_up) for i in range(2)]

        def write_rows() -> None:
            for step in range(1, steps + 1):
                with writer.begin() as db:
                    db.add(MetricPoint(job_id="job_blip", step=step, values={"train/loss": 1.0}))
                if step == 10:
                    for reader in readers:
                        reader.start()
                time.sleep(0.04)
            with writer.begin() as db:
                db.get(Job, "job_blip").status = "succeeded"

        rows = threading.Thread(target=write_rows)
        rows.start()
        deadline = time.monotonic() + 20
        while any(len(getattr(app.state.tails.get("job_blip"), "queues", ())) < 2 for app in apps):
            assert time.monotonic() < deadline, "the streams did not open"  # each app's two, before the cut
            time.sleep(0.05)
        proxy.cut()
        time.sleep(3)
        proxy.restore()
        rows.join(30)
        deadline = time.monotonic() + 30
        for reader in readers:  # before the fix: the streams went silent, a keep-alive a second, and never ended
            reader.join(max(deadline - time.monotonic(), 0))
        proxy.close()
    assert len(reads) == len(readers), "a stream never ended"
    for (base, _), read in reads.items():
        assert read.steps == list(range(1, steps + 1)), (base, read.hows)  # every row once, in order
        assert read.hows == ["end"] if base == waits else read.hows[0] == "error" and read.hows[-1] == "end", (
            base, read.hows)
