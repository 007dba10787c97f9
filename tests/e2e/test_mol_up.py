"""The whole service as a user starts it (`mol up`, embedded default), driven through the REST API only."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import tarfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from playwright.sync_api import expect, sync_playwright
from transformers import AutoModelForCausalLM

from tests.e2e.conftest import running_service
from tests.e2e.test_dashboard import CHROMIUM, FLAGS, SHOTS

ROOT = Path(__file__).resolve().parents[2]


def test_upload_train_stream_download_load(service, tmp_path):
    client, home = service.client, service.home
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["demo"]
    demo = home / "demo"
    ids = {}
    for purpose, name in (("domain", "domain.jsonl"), ("general", "general.jsonl"), ("eval", "eval.jsonl")):
        with (demo / name).open("rb") as handle:
            response = client.post("/v1/datasets", data={"purpose": purpose}, files={"file": (name, handle)})
        # mol up registered these very files as the demo's datasets: the upload returns those
        assert response.status_code == 200 and response.json()["filename"] == f"demo-{name}", response.text
        ids[purpose] = response.json()["id"]
    spec = {"name": "e2e", "base_model": "demo", "domain_data": [ids["domain"]], "general_data": [ids["general"]],
            "eval_data": ids["eval"], "method": "mol", "seq_len": 64, "batch_size": 8, "lr": 1e-3, "max_steps": 6,
            "eval_every": 3, "save_every": 3, "eval_batches": 1, "qa_max_new_tokens": 3}
    job = client.post("/v1/jobs", json=spec).json()

    points, end = [], None
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"},
                       timeout=300) as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if kind == "metric":
                    points.append(data)
                elif kind == "end":
                    end = data
                    break
    assert end == {"status": "succeeded"}
    assert sorted({p["step"] for p in points if "train/loss" in p}) == [1, 2, 3, 4, 5, 6]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"

    names = [c["name"] for c in client.get(f"/v1/jobs/{job['id']}/checkpoints").json()]
    assert names == ["step-3", "step-6"]
    archive = client.get(f"/v1/jobs/{job['id']}/checkpoints/step-6/download")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "download", filter="data")
    model_dir = next((tmp_path / "download").iterdir())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(demo / "model")
    x = torch.tensor([[base.config.bos_token_id, 5, 6, 7]])
    assert (model(x).logits - base(x).logits).abs().max() > 1e-4


def test_restart_keeps_the_token_and_survives_deleting_a_demo_dataset(start_service):
    with start_service() as first:
        demo = {d["purpose"]: d["id"] for d in first.client.get("/v1/datasets").json()}
        assert set(demo) == {"domain", "general", "eval"}
        assert first.client.delete(f"/v1/datasets/{demo['domain']}").status_code == 204
        assert (first.home / "demo" / "domain.jsonl").is_file()
    with start_service(stop_in_background=True) as second:  # the same MOL_HOME started again
        assert second.token == first.token
        assert {d["purpose"] for d in second.client.get("/v1/datasets").json()} == {"domain", "general", "eval"}


def _new_worker_pid(client, not_pid: int | None = None, timeout: float = 120) -> int:
    """The pid of a worker that /healthz lists as seen, other than ``not_pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in client.get("/healthz").json()["workers"]:
            pid = int(worker["name"].rsplit(":", 1)[1])
            if pid != not_pid:
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no worker other than {not_pid} was seen within {timeout} s")


def _state(pid: int) -> str | None:
    """The process's state letter (Z: a <defunct> zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_mol_up_restarts_a_killed_worker_and_stops_it_on_sigterm(start_service, monkeypatch):
    monkeypatch.setenv("MOL_HEARTBEAT_S", "0.5")  # workers show in /healthz within a second
    monkeypatch.setenv("MOL_DEMO_MODEL", "false")  # no demo to build: this test runs no job
    with start_service() as up:
        first = _new_worker_pid(up.client)
        os.kill(first, signal.SIGKILL)
        second = _new_worker_pid(up.client, not_pid=first, timeout=60)
        assert _state(first) is None  # reaped by mol up, not left <defunct>
        assert "worker exited (-9); restarting it in 1 s" in up.log.read_text()
        assert "[tasks]" not in up.log.read_text() and "[tasks]" in (up.home / "worker.log").read_text()  # banner
        mol_up = int(Path(f"/proc/{second}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the worker's parent
        os.kill(mol_up, signal.SIGTERM)  # to `mol up` alone, as `docker stop` or systemd send it
        deadline = time.monotonic() + 60
        while _state(second) is not None or _state(mol_up) not in ("Z", None):
            assert time.monotonic() < deadline, "mol up or its worker outlived SIGTERM"
            time.sleep(0.2)


def _wait_ready(client, timeout: float = 300) -> list[dict]:
    """Every /v1/demo answer until it says ready."""
    seen, deadline = [], time.monotonic() + timeout
    while not seen or seen[-1]["state"] != "ready":
        assert time.monotonic() < deadline, seen[-1]
        seen.append(client.get("/v1/demo").json())
        assert seen[-1]["state"] in ("building", "ready"), seen[-1]
        time.sleep(0.3)
    return seen


def test_url_comes_before_the_demo_which_two_homes_build_once(tmp_path):
    """`mol up` answers while the demo builds (the dashboard's banner shows it) and refuses a job on it; a second
    MOL_HOME started meanwhile shares the build (it waits for it, or finds it done); both then offer the demo."""
    env = {"MOL_DEMO_CACHE": str(tmp_path / "cache"), "MOL_DEMO_PRETRAIN_STEPS": "30"}
    with ExitStack() as stack, sync_playwright() as playwright:
        first = stack.enter_context(running_service(tmp_path / "home-a", tmp_path / "home-a.log",
                                                    wait_for_demo=False, env=env, stop_in_background=True))
        status = first.client.get("/v1/demo").json()
        assert status["state"] == "building", status  # the URL answered before the demo was built
        assert [m["id"] for m in first.client.get("/v1/models").json()["data"]] == []
        refused = first.client.post("/v1/jobs", json={"name": "early", "base_model": "demo", "domain_data": ["x"],
                                                        "general_data": ["y"]})
        assert refused.status_code == 422 and "'demo' is not ready yet" in refused.json()["detail"], refused.text
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(f"{first.url}#/new")  # the New job form has no base model yet: it says the demo is building
        expect(page.locator("#demo-banner")).to_contain_text("The demo model is being built", timeout=60_000)
        note = page.locator("[data-no-model]")
        expect(note).to_have_attribute("data-no-model", "building")
        expect(note).to_contain_text("The demo model is being built")
        expect(note).to_contain_text('Its base model "demo" appears here once it is ready')
        expect(note).not_to_have_class("error")
        page.screenshot(path=SHOTS / "demo-banner.png")

        second = stack.enter_context(running_service(tmp_path / "home-b", tmp_path / "home-b.log",
                                                     wait_for_demo=False, env=env, stop_in_background=True))
        for up in (first, second):
            _wait_ready(up.client)
        expect(page.locator("#demo-banner")).to_have_text("The demo model is ready.", timeout=60_000)
        expect(page.locator("#base_model")).to_have_value("demo")  # the form, drawn again, offers it
        browser.close()
        logs = [up.log.read_text() for up in (first, second)]
        assert "demo built in" in logs[0] and "demo built in" not in logs[1], logs  # one build, shared
        assert re.search(r"demo: pretraining step 30/30, .* elapsed, about 0 s left", logs[0]), logs[0]
        for up in (first, second):
            assert [m["id"] for m in up.client.get("/v1/models").json()["data"]] == ["demo"]
            assert {d["purpose"] for d in up.client.get("/v1/datasets").json()} == {"domain", "general", "eval"}
        assert (first.home / "demo").resolve() == (second.home / "demo").resolve()
        assert (first.home / "demo").resolve().parent == tmp_path / "cache"
