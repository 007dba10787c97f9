"""Webhooks: signed job events reach a local receiver, a failing receiver is retried with backoff, a forged signature
fails the receiver's check (the standardwebhooks package), owners stay apart, and bad URLs are refused; one owner's
hanging endpoints delay no other owner, internal addresses are refused, and the log keeps coarse outcomes only."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from standardwebhooks import Webhook, WebhookVerificationError

from api.app import create_app
from api.webhooks import new_secret, signed_headers
from store.db import SCHEMA_VERSION, Job, SchemaVersion, WebhookDelivery, init_db, make_engine, new_id
from store.jobs import finish
from tests.version_8 import create_version_8_tables
from worker.runner import DatabaseRecorder

RETRY_S = 0.2  # the wait before each retry in these tests (minutes in a deployment)


class Receiver:
    """A webhook receiver on loopback: answers each POST with the next of ``statuses`` (then 200) and keeps what
    came (monotonic time, headers, body)."""

    def __init__(self, statuses: list[int], delay_s: float = 0) -> None:
        self.statuses, self.received = list(statuses), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(delay_s)
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def receiver():
    """receiver(statuses=()) -> a running Receiver, shut down after the test."""
    made = []

    def start(statuses=(), delay_s=0):
        made.append(Receiver(list(statuses), delay_s))
        return made[-1]

    yield start
    for each in made:
        each.server.shutdown()
        each.server.server_close()


class Hanging:
    """A server on loopback that accepts connections and never answers (nor reads), until it is closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.accepted: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):  # closed
            while True:
                self.accepted.append(self.listener.accept()[0])

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def hanging():
    """A running Hanging server, closed after the test."""
    server = Hanging()
    yield server
    server.close()


@pytest.fixture
def client(settings, queued):
    """The API with its webhook dispatcher polling fast and retrying after RETRY_S; receivers on loopback allowed."""
    settings.webhook_poll_s, settings.webhook_retry_s, settings.webhook_timeout_s = 0.05, [RETRY_S] * 3, 5
    settings.webhook_allow_hosts = ["127.0.0.0/8"]
    with TestClient(create_app(settings, enqueue=queued.append)) as c:
        yield c


HOLDER = "w:1"  # the runner that holds the jobs add_job makes


def add_job(client, owner="alice", status="running") -> str:
    with client.app.state.services.sessions.begin() as db:
        job = Job(id=new_id("job"), owner=owner, name="hooked", spec={"base_model": "tiny"}, max_steps=4,
                  status=status, step=4, lease_owner=HOLDER)
        db.add(job)
    return job.id


def wait_for(check, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def deliveries(client, auth, endpoint_id, owner="alice"):
    return client.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=auth(owner)).json()


def test_a_finished_job_is_posted_signed_to_each_endpoint_that_wants_it(client, auth, receiver):
    hook = receiver()
    endpoint = client.post("/v1/webhooks", headers=auth(), json={"url": hook.url}).json()
    only_failures = client.post("/v1/webhooks", headers=auth(), json={"url": hook.url, "events": ["job.failed"]})
    assert endpoint["secret"].startswith("whsec_")
    assert "secret" not in client.get("/v1/webhooks", headers=auth()).json()[0]  # shown once, when created

    job_id = add_job(client)
    finish(client.app.state.services.sessions, job_id, "succeeded", HOLDER)
    (_, headers, body), = wait_for(lambda: hook.received)

    event = Webhook(endpoint["secret"]).verify(body, headers)  # raises unless the signature is right
    assert event["type"] == "job.succeeded" and event["data"]["job_id"] == job_id
    assert event["data"]["status"] == "succeeded" and event["data"]["step"] == 4
    log = wait_for(lambda: [d for d in deliveries(client, auth, endpoint["id"]) if d["status"] != "pending"])
    assert [(d["id"], d["status"], d["attempts"]) for d in log] == [(headers["webhook-id"], "succeeded", 1)]
    assert log[0]["attempts_log"][0]["status_code"] == 200 and log[0]["next_attempt_at"] is None
    assert deliveries(client, auth, only_failures.json()["id"]) == []  # it asked for job.failed only


def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt_after_the_backoff(client, auth, receiver):
    hook = receiver([500, 503])
    endpoint = client.post("/v1/webhooks", headers=auth(), json={"url": hook.url, "events": ["job.failed"]}).json()
    finish(client.app.state.services.sessions, add_job(client), "failed", HOLDER, "RuntimeError: out of memory")

    (done,) = wait_for(lambda: [d for d in deliveries(client, auth, endpoint["id"]) if d["status"] == "succeeded"])
    assert done["attempts"] == 3 and [a["status_code"] for a in done["attempts_log"]] == [500, 503, 200]
    assert done["payload"]["data"]["error"] == "RuntimeError: out of memory"
    times = [moment for moment, _, _ in hook.received]
    assert len(times) == 3 and all(later - earlier >= RETRY_S * 0.9 for earlier, later in itertools.pairwise(times))
    assert {headers["webhook-id"] for _, headers, _ in hook.received} == {done["id"]}  # one id: receivers dedupe
    for _, headers, body in hook.received:
        Webhook(endpoint["secret"]).verify(body, headers)


def test_a_receiver_that_never_answers_2xx_ends_failed_after_every_attempt(client, auth, receiver):
    hook = receiver([500] * 10)
    endpoint = client.post("/v1/webhooks", headers=auth(), json={"url": hook.url}).json()
    response = client.post(f"/v1/jobs/{add_job(client, status='queued')}/cancel", headers=auth())
    assert response.json()["status"] == "cancelled"

    (failed,) = wait_for(lambda: [d for d in deliveries(client, auth, endpoint["id"]) if d["status"] == "failed"])
    assert failed["event_type"] == "job.cancelled" and failed["attempts"] == 4  # once, then one per retry wait
    time.sleep(RETRY_S + 0.2)
    assert len(hook.received) == 4


def test_a_crossed_forgetting_budget_is_an_event_of_its_own(client, auth, receiver):
    hook = receiver()
    endpoint = client.post("/v1/webhooks", headers=auth(), json={"url": hook.url,
                                                                 "events": ["job.budget_crossed"]}).json()
    job_id = add_job(client)
    recorder = DatabaseRecorder(client.app.state.services.sessions, job_id, "here:1", heartbeat_s=None)
    recorder.on_event({"step": 2, "kind": "eval", "message": "held-out figures"})  # not an event endpoints get
    recorder.on_event({"step": 3, "kind": "budget", "message": "general KL 0.5 is over the budget 0.3",
                       "general_kl": 0.5, "max_general_kl": 0.3, "on_budget": "warn"})
    (_, headers, body), = wait_for(lambda: hook.received)
    event = Webhook(endpoint["secret"]).verify(body, headers)
    assert event["type"] == "job.budget_crossed" and event["data"]["job_id"] == job_id
    assert (event["data"]["general_kl"], event["data"]["max_general_kl"]) == (0.5, 0.3)


def test_a_slow_endpoint_holds_up_no_other_delivery(client, auth, receiver):
    slow, fast = receiver(delay_s=2), receiver()
    slow_id = client.post("/v1/webhooks", headers=auth(), json={"url": slow.url}).json()["id"]
    finish(client.app.state.services.sessions, add_job(client), "succeeded", HOLDER)
    wait_for(lambda: slow.received)  # its answer takes 2 s
    client.post("/v1/webhooks", headers=auth(), json={"url": fast.url, "events": ["job.failed"]})
    finish(client.app.state.services.sessions, add_job(client), "failed", HOLDER, "RuntimeError")
    wait_for(lambda: fast.received, timeout_s=1.5)
    assert [d["attempts"] for d in deliveries(client, auth, slow_id)] == [0, 0]  # its first is still in flight


def test_the_receivers_verifier_rejects_a_forged_signature_or_a_changed_body():
    secret, body = new_secret(), b'{"type":"job.succeeded","data":{"job_id":"job_1"}}'
    headers = signed_headers(secret, "msg_1", body, int(time.time()))
    assert Webhook(secret).verify(body, headers)["data"]["job_id"] == "job_1"
    forged = signed_headers(new_secret(), "msg_1", body, int(time.time()))  # someone without our secret
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, forged)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"job_1", b"job_2"), headers)
    with pytest.raises(WebhookVerificationError):  # a replay of an old, genuine delivery
        Webhook(secret).verify(body, signed_headers(secret, "msg_1", body, int(time.time()) - 3600))


def test_another_owner_can_neither_see_nor_delete_an_endpoint_nor_get_its_events(client, auth, receiver):
    hook = receiver()
    alices = client.post("/v1/webhooks", headers=auth(), json={"url": hook.url}).json()
    bobs = client.post("/v1/webhooks", headers=auth("bob"), json={"url": hook.url}).json()
    assert [e["id"] for e in client.get("/v1/webhooks", headers=auth("bob")).json()] == [bobs["id"]]
    assert client.get(f"/v1/webhooks/{alices['id']}/deliveries", headers=auth("bob")).status_code == 404
    assert client.delete(f"/v1/webhooks/{alices['id']}", headers=auth("bob")).status_code == 404

    finish(client.app.state.services.sessions, add_job(client), "succeeded", HOLDER)
    wait_for(lambda: deliveries(client, auth, alices["id"]))
    assert deliveries(client, auth, bobs["id"], owner="bob") == []
    assert client.delete(f"/v1/webhooks/{alices['id']}", headers=auth()).status_code == 204
    assert client.get(f"/v1/webhooks/{alices['id']}/deliveries", headers=auth()).status_code == 404


def test_a_url_that_is_not_http_or_an_unknown_event_is_a_422(client, auth):
    for body in ({"url": "ftp://example.com/hook"}, {"url": "javascript:alert(1)"}, {"url": "not a url"},
                 {"url": "https://example.com", "events": ["job.started"]}):
        response = client.post("/v1/webhooks", headers=auth(), json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"].startswith(("url: ", "events.0: ")), response.text
    assert client.get("/v1/webhooks", headers=auth()).json() == []


def test_one_owners_endpoints_that_never_answer_delay_no_other_owner(client, auth, receiver, hanging):
    for i in range(20):  # the most one owner may have
        client.post("/v1/webhooks", headers=auth(), json={"url": f"{hanging.url}/{i}"}).raise_for_status()
    for _ in range(3):  # 60 deliveries that each hang until the 5 s timeout
        finish(client.app.state.services.sessions, add_job(client), "succeeded", HOLDER)
    wait_for(lambda: len(hanging.accepted) >= 4)
    working = receiver()
    client.post("/v1/webhooks", headers=auth("bob"), json={"url": working.url}).raise_for_status()
    start = time.monotonic()
    finish(client.app.state.services.sessions, add_job(client, owner="bob"), "succeeded", HOLDER)
    wait_for(lambda: working.received, timeout_s=2)
    assert time.monotonic() - start < 2
    assert len(hanging.accepted) <= 4  # MOL_WEBHOOK_CONCURRENCY_PER_OWNER of alice's attempts at once, no more


def test_one_endpoints_deliveries_follow_each_other_without_waiting_a_poll_each(client, auth, receiver):
    """One attempt at a time per endpoint, but each as soon as the one before it ended: a busy owner's deliveries
    do not queue up one a poll (with the default 1 s poll, 20 took 20 s; bench/api_load saw 59 of 138 in 30 s)."""
    client.app.state.services.settings.webhook_poll_s = 1.0
    hook = receiver()
    client.post("/v1/webhooks", headers=auth(), json={"url": hook.url}).raise_for_status()
    jobs = [add_job(client) for _ in range(20)]
    start = time.monotonic()
    for job in jobs:
        finish(client.app.state.services.sessions, job, "succeeded", HOLDER)
    wait_for(lambda: len(hook.received) >= 20, timeout_s=15)
    assert time.monotonic() - start < 3.5


def test_an_owner_has_at_most_max_webhooks_per_owner_endpoints(client, auth, receiver):
    hook = receiver()
    for _ in range(20):
        assert client.post("/v1/webhooks", headers=auth(), json={"url": hook.url}).status_code == 201
    refused = client.post("/v1/webhooks", headers=auth(), json={"url": hook.url})
    assert refused.status_code == 409 and "MOL_MAX_WEBHOOKS_PER_OWNER=20" in refused.json()["detail"]
    assert len(client.get("/v1/webhooks", headers=auth()).json()) == 20
    assert client.post("/v1/webhooks", headers=auth("bob"), json={"url": hook.url}).status_code == 201


def test_an_endpoint_that_keeps_failing_cools_down_longer_each_time(client, auth, receiver):
    settings = client.app.state.services.settings
    settings.webhook_failures_before_cooldown = 2
    settings.webhook_cooldown_s, settings.webhook_cooldown_max_s = 0.5, 0.75
    hook = receiver([500] * 10)
    endpoint = client.post("/v1/webhooks", headers=auth(), json={"url": hook.url}).json()
    finish(client.app.state.services.sessions, add_job(client), "failed", HOLDER, "RuntimeError")
    (failed,) = wait_for(lambda: [d for d in deliveries(client, auth, endpoint["id"]) if d["status"] == "failed"])
    times = [moment for moment, _, _ in hook.received]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert failed["attempts"] == 4 and len(gaps) == 3, gaps
    assert gaps[1] >= 0.45 and gaps[2] >= 0.7, gaps  # after the retry wait (0.2 s): 0.5 s, then 1 s capped at 0.75


INTERNAL = {  # a URL of each kind of address no webhook may go to, with the kind the refusal names
    "http://127.0.0.1/hook": "loopback", "http://[::1]/hook": "loopback",
    "http://2130706433/hook": "loopback",  # 127.0.0.1 spelt as one number
    "http://[::ffff:127.0.0.1]/hook": "loopback", "http://0.0.0.0/hook": "unspecified",
    "http://10.1.2.3/hook": "private", "http://172.16.0.1/hook": "private", "http://192.168.1.1/": "private",
    "http://[fc00::1]/hook": "private", "http://[fe80::1]/hook": "link-local",
    "http://169.254.169.254/latest/meta-data/": "cloud metadata", "http://[fd00:ec2::254]/": "cloud metadata",
    "http://224.0.0.1/hook": "multicast", "http://[ff02::1]/hook": "multicast",
    "http://240.0.0.1/hook": "reserved", "http://100.64.0.1/hook": "non-public",
}


def test_an_internal_address_is_refused_at_registration_naming_url(client, auth):
    client.app.state.services.settings.webhook_allow_hosts = []
    for url, kind in INTERNAL.items():
        response = client.post("/v1/webhooks", headers=auth(), json={"url": url})
        assert response.status_code == 422, (url, response.text)
        detail = response.json()["detail"]
        assert detail.startswith("url: ") and f"is a {kind} address" in detail, (url, detail)
    assert client.get("/v1/webhooks", headers=auth()).json() == []


def test_the_allow_list_admits_internal_networks_but_never_the_metadata_service(client, auth):
    client.app.state.services.settings.webhook_allow_hosts = ["127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8"]
    for url in ("http://127.0.0.1:9/hook", "http://10.9.8.7/hook", "https://hooks.example.com/x"):
        assert client.post("/v1/webhooks", headers=auth(), json={"url": url}).status_code == 201, url
    refused = client.post("/v1/webhooks", headers=auth(), json={"url": "http://169.254.169.254/"})
    assert refused.status_code == 422 and "cloud metadata" in refused.json()["detail"]


def test_a_host_name_resolving_to_loopback_is_refused_when_sent(client, auth, receiver):
    client.app.state.services.settings.webhook_allow_hosts = []  # localhost: a name, checked at each attempt
    hook = receiver()
    endpoint = client.post("/v1/webhooks", headers=auth(),
                           json={"url": hook.url.replace("127.0.0.1", "localhost")}).json()
    finish(client.app.state.services.sessions, add_job(client), "succeeded", HOLDER)
    (delivery,) = wait_for(lambda: [d for d in deliveries(client, auth, endpoint["id"]) if d["attempts"]])
    attempt = delivery["attempts_log"][0]
    assert attempt["outcome"] == "no_public_address" and attempt["status_code"] is None
    assert attempt["error"] == "no_public_address" and hook.received == []


def answer_as_redis(listener: socket.socket) -> None:
    """Answers each connection as Redis answers an HTTP request (not HTTP), then hangs up; until closed."""
    with suppress(OSError):
        while True:
            conn = listener.accept()[0]
            conn.sendall(b"-ERR unknown command 'POST'\r\n")
            conn.close()


def test_the_log_keeps_coarse_outcomes_that_tell_no_port_from_another(client, auth, receiver, hanging):
    client.app.state.services.settings.webhook_timeout_s = 1
    closed = socket.create_server(("127.0.0.1", 0))
    closed_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    closed.close()  # nothing listens there: refused
    not_http = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=answer_as_redis, args=(not_http,), daemon=True).start()
    urls = {"closed": closed_url, "not_http": f"http://127.0.0.1:{not_http.getsockname()[1]}/hook",
            "hanging": hanging.url, "failing": receiver([503] * 10).url}
    ids = {name: client.post("/v1/webhooks", headers=auth(), json={"url": url}).json()["id"]
           for name, url in urls.items()}
    finish(client.app.state.services.sessions, add_job(client), "succeeded", HOLDER)
    first = {name: wait_for(lambda i=i: [d for d in deliveries(client, auth, i) if d["attempts"]])[0]["attempts_log"][0]
             for name, i in ids.items()}
    not_http.close()
    assert {name: (a["outcome"], a["error"]) for name, a in first.items()} == {
        "closed": ("connection_failed", "connection_failed"), "not_http": ("connection_failed", "connection_failed"),
        "hanging": ("timeout", "timeout"), "failing": ("http_error", "http_error 5xx")}
    assert first["failing"]["status_code"] == 503


def test_a_version_5_database_gains_the_webhook_tables(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'mol.db'}")
    create_version_8_tables(engine)  # the models' newer tables and columns come from later revisions
    with engine.begin() as conn:  # the shape version 5 left behind
        conn.execute(text("DROP TABLE webhook_deliveries"))
        conn.execute(text("DROP TABLE webhook_endpoints"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (5)"))
    sessions = init_db(engine)
    with sessions() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
        assert db.scalars(select(WebhookDelivery)).all() == []
    engine.dispose()


def test_a_cancel_that_lands_as_an_attempt_ends_stops_the_dispatcher(settings):
    """The app's shutdown cancels the dispatcher and awaits it: a cancel arriving as an attempt frees its lane must
    not be swallowed (asyncio.wait_for did so before Python 3.12, and the shutdown waited forever)."""
    from api.webhooks import WebhookDispatcher

    async def cancel_as_a_lane_frees() -> asyncio.Task:
        settings.webhook_poll_s = 60
        dispatcher = WebhookDispatcher(None, settings)
        waiting = asyncio.create_task(dispatcher.next_round())
        await asyncio.sleep(0.05)  # in its wait
        dispatcher.lane_freed.set()
        waiting.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(waiting), 5)
        return waiting

    assert asyncio.run(cancel_as_a_lane_frees()).cancelled()
