"""A real Redis (127.0.0.1:6379, started by .ci/run) and real Celery worker processes started by the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from api.service import worker_command, worker_env
from store.settings import Settings
from tests.redis_db import claim_redis_db

TOKEN = "tok-worker-tests"


@pytest.fixture(scope="session")
def redis_db() -> int:
    """This run's own Redis database (tests/redis_db.py: MOL_TEST_REDIS_DB, else a free one claimed by a lock)."""
    return claim_redis_db()


@pytest.fixture
def service_env(tmp_path, tiny_model_dir, redis_db) -> dict[str, str]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    client.ping()  # fails loudly when Redis is not running: .ci/run starts it
    client.flushdb()
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_model_dir)
    return {"MOL_HOME": str(tmp_path / "home"), "MOL_BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
            "MOL_MODELS_DIR": str(models), "MOL_DEMO_MODEL": "false", "MOL_TOKENS": f"tester:{TOKEN}",
            "MOL_STREAM_POLL_S": "0.05", "MOL_CANCEL_GRACE_S": "5", "MOL_HEARTBEAT_S": "1"}


class Workers:
    """Starts and kills Celery worker processes for one test."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = os.environ | env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, procs: int | None = None) -> subprocess.Popen:
        """A worker as ``mol worker --procs N`` starts one (capacity 1 without ``procs``)."""
        log = (self.log_dir / f"worker-{len(self.procs)}.log").open("w")
        proc = subprocess.Popen(
            worker_command(Settings(), f"test{len(self.procs)}"), env=self.env | worker_env(procs=procs),
            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def workers(service_env, tmp_path):
    pool = Workers(service_env, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def api(service_env, monkeypatch):
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    with TestClient(create_app(Settings())) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


@pytest.fixture
def submit(api, corpora):
    """submit(**spec fields) -> the new job's id (or, with ``expect`` a 4xx, the answer's detail)."""
    ids = {}
    for purpose in ("domain", "general", "eval"):
        with open(corpora[purpose], "rb") as handle:
            response = api.post("/v1/datasets", data={"purpose": purpose}, files={"file": ("x.jsonl", handle)})
        ids[purpose] = response.json()["id"]

    def send(expect: int = 201, **extra) -> str:
        spec = {"name": "w", "base_model": "tiny", "domain_data": [ids["domain"]], "general_data": [ids["general"]],
                "eval_data": ids["eval"], "seq_len": 32, "batch_size": 4, "lr": 3e-3, "max_steps": 6,
                "eval_every": 3, "save_every": 2, "eval_batches": 1, "qa_max_new_tokens": 2,
                "sample_max_tokens": 4} | extra  # sample generations run at every evaluation: short ones are fast
        response = api.post("/v1/jobs", json=spec)
        assert response.status_code == expect, response.text
        return response.json()["id"] if expect == 201 else response.json()["detail"]

    return send


def _wait_for(predicate, timeout: float = 120, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def wait_for():
    """wait_for(predicate, timeout=120, what=...) -> the predicate's first truthy value."""
    return _wait_for
