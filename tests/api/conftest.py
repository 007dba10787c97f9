import json
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from store.settings import Settings

TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
ARITHMETIC = "".join(json.dumps({"text": f"Question: What is {i} plus 1?\nAnswer: {i + 1}"}) + "\n" for i in range(40))
PROSE = "".join(json.dumps({"text": f"The river and the stone number {i} under the quiet morning."}) + "\n"
                for i in range(40))


def tiny_job_spec(upload, owner: str = "alice", **fields) -> dict:
    """A spec training the tiny model 2 steps (evaluated and saved at step 2) on arithmetic and prose corpora it
    uploads for ``owner``; ``fields`` override."""
    domain = upload(ARITHMETIC, owner=owner).json()["id"]
    general = upload(PROSE, purpose="general", owner=owner).json()["id"]
    return {"name": "t", "base_model": "tiny", "domain_data": [domain], "general_data": [general], "seq_len": 32,
            "batch_size": 4, "lr": 3e-3, "max_steps": 2, "eval_every": 2, "save_every": 2, "eval_batches": 1} | fields


@contextmanager
def worker_task_in_process(client, sender, work):
    """Overrides a route's ``sender`` dependency so each task it queues runs here, at once, as ``work(*args)``
    (what the worker task does); yields the list of the tasks' arguments."""
    calls: list[tuple] = []

    def send(*args) -> None:
        calls.append(args)
        work(*args)

    client.app.dependency_overrides[sender] = lambda: send
    try:
        yield calls
    finally:
        client.app.dependency_overrides.clear()


@pytest.fixture
def queued() -> list[str]:
    return []


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path, tiny_model_dir) -> Settings:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_model_dir)
    database_url = None
    if request.param == "postgresql":
        from sqlalchemy import create_engine

        from tests.empty_database import empty_database

        database_url = request.getfixturevalue("postgres_url")
        engine = create_engine(database_url)
        empty_database(engine)  # every test starts from an empty schema
        engine.dispose()
    return Settings(home=tmp_path / "home", models_dir=models, demo_model=False, max_upload_mb=0.05,
                    database_url=database_url, tokens=",".join(f"{o}:{t}" for o, t in TOKENS.items()),
                    stream_poll_s=0.05)


@pytest.fixture
def client(settings, queued) -> TestClient:
    app = create_app(settings, enqueue=queued.append)
    with TestClient(app) as c:
        yield c


def _auth(owner: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[owner]}"}


@pytest.fixture
def auth():
    """auth(owner="alice") -> the Authorization header of that owner."""
    return _auth


@pytest.fixture
def upload(client):
    """upload(content, purpose="domain", filename="data.jsonl", owner="alice") -> the response."""

    def send(content: bytes | str, purpose: str = "domain", filename: str = "data.jsonl", owner: str = "alice"):
        data = content.encode() if isinstance(content, str) else content
        return client.post("/v1/datasets", headers=_auth(owner), data={"purpose": purpose},
                           files={"file": (filename, data, "application/octet-stream")})

    return send
