"""Webhooks: signed job events reach a local receiver, a failing receiver is retried with backoff, a forged signature
fails the receiver's check (the standardwebhooks package), owners stay apart, and bad URLs are refused."""

from __future__ import annotations

import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from standardwebhooks import Webhook, WebhookVerificationError

from api.app import create_app
from api.db import SCHEMA_VERSION, Base, Job, SchemaVersion, WebhookDelivery, init_db, make_engine, new_id
from api.webhooks import new_secret, signed_headers
from worker.runner import DatabaseRecorder, finish

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


@pytest.fixture
def client(settings, queued):
    """The API with its webhook dispatcher polling fast and retrying after RETRY_S."""
    settings.webhook_poll_s, settings.webhook_retry_s, settings.webhook_timeout_s = 0.05, [RETRY_S] * 3, 5
    with TestClient(create_app(settings, enqueue=queued.append)) as c:
        yield c


def add_job(client, owner="alice", status="running") -> str:
    with client.app.state.services.sessions.begin() as db:
        job = Job(id=new_id("job"), owner=owner, name="hooked", spec={"base_model": "tiny"}, max_steps=4,
                  status=status, step=4)
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
    finish(client.app.state.services.sessions, job_id, "succeeded")
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
    finish(client.app.state.services.sessions, add_job(client), "failed", "RuntimeError: out of memory")

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
    finish(client.app.state.services.sessions, add_job(client), "succeeded")
    wait_for(lambda: slow.received)  # its answer takes 2 s
    client.post("/v1/webhooks", headers=auth(), json={"url": fast.url, "events": ["job.failed"]})
    finish(client.app.state.services.sessions, add_job(client), "failed", "RuntimeError")
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

    finish(client.app.state.services.sessions, add_job(client), "succeeded")
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


def test_a_version_5_database_gains_the_webhook_tables(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'mol.db'}")
    Base.metadata.create_all(engine)
    with engine.begin() as conn:  # the shape version 5 left behind
        conn.execute(text("DROP TABLE webhook_deliveries"))
        conn.execute(text("DROP TABLE webhook_endpoints"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (5)"))
    sessions = init_db(engine)
    with sessions() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION] == [7]
        assert db.scalars(select(WebhookDelivery)).all() == []
    engine.dispose()
