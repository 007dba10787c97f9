"""`mol up` started the way a user starts it (embedded default: SQLite, filesystem broker, demo model)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STOPPING: list[subprocess.Popen] = []  # `mol up`s told to stop, whose clean exit the session checks at its end


def _stopped_cleanly(proc: subprocess.Popen) -> None:
    """Waits for a `mol up` sent Ctrl-C to exit, asserting a clean exit; SIGKILLs its group if it did not."""
    try:
        assert proc.wait(60) == 0 or proc.returncode in (-signal.SIGINT, 130), f"mol up exited {proc.returncode}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session", autouse=True)
def stopping_services() -> Iterator[None]:
    yield
    while STOPPING:
        _stopped_cleanly(STOPPING.pop())


@contextmanager
def running_service(home: Path, log_path: Path, wait_for_demo: bool = True, env: dict[str, str] | None = None,
                    stop_in_background: bool = False) -> Iterator[SimpleNamespace]:
    """`mol up` on ``home`` until the block ends (then Ctrl-C): its client (with the token), home, URL, log.
    It yields once the demo (built in the background) is ready, unless ``wait_for_demo`` is false; ``env`` is
    added to the environment last. With ``stop_in_background`` the block ends without waiting for `mol up` to
    finish its graceful stop (its worker's takes ~4 s); the session checks the exit at its end."""
    port = free_port()
    env = os.environ | {"MOL_HOME": str(home), "MOL_DEMO_PRETRAIN_STEPS": "5"} | (env or {})
    env.pop("MOL_BROKER_URL", None)
    env.pop("MOL_DATABASE_URL", None)
    log = log_path.open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "mol_cli", "up", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    url = None
    deadline = time.monotonic() + 300
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"mol up exited: {log.seek(0) or log.read()[-2000:]}")
        url = re.search(r"http://\S+\?token=(\S+)", line)
    assert url, "mol up printed no dashboard URL"
    base, token = url[0].split("/?token=")[0], url[1]
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    try:
        deadline = time.monotonic() + 300
        while wait_for_demo and (demo := client.get("/v1/demo").json())["state"] not in ("ready", "off"):
            assert demo["state"] == "building" and time.monotonic() < deadline, demo
            time.sleep(0.2)
        yield SimpleNamespace(client=client, home=home, url=url[0], token=token, log=log_path)
    finally:  # also when the block failed: never leave a `mol up` behind
        client.close()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        if stop_in_background:
            STOPPING.append(proc)
        else:
            _stopped_cleanly(proc)


@pytest.fixture
def service(tmp_path):
    with running_service(tmp_path / "home", tmp_path / "mol-up.log", stop_in_background=True) as running:
        yield running


@pytest.fixture
def start_service(tmp_path):
    """start_service(stop_in_background=False) -> a context manager running `mol up` on the same MOL_HOME each time
    (a restart); a start that no other follows may stop in the background."""
    starts = iter(range(1, 100))
    return lambda **options: running_service(tmp_path / "home", tmp_path / f"mol-up-{next(starts)}.log", **options)
