"""`mol up` started the way a user starts it (embedded default: SQLite, filesystem broker, demo model)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(tmp_path):
    port = free_port()
    env = os.environ | {"MOL_HOME": str(tmp_path / "home"), "MOL_DEMO_PRETRAIN_STEPS": "5"}
    env.pop("MOL_BROKER_URL", None)
    env.pop("MOL_DATABASE_URL", None)
    log = (tmp_path / "mol-up.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "up", "--port", str(port)], env=env, cwd=ROOT,
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
    yield SimpleNamespace(client=client, home=tmp_path / "home", url=url[0], log=tmp_path / "mol-up.log")
    client.close()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    try:
        assert proc.wait(60) == 0 or proc.returncode in (-signal.SIGINT, 130)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


