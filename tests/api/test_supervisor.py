"""`mol up`'s worker supervisor (api/supervisor.py) on tiny stand-in processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from api.supervisor import Supervisor


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def reaped(pid: int) -> bool:
    """Gone from the process table: neither running nor a <defunct> zombie."""
    return not Path(f"/proc/{pid}").exists()


def test_a_killed_process_is_reaped_and_started_again():
    keeper = Supervisor(python("import time; time.sleep(60)"), first_backoff_s=0.05, say=lambda _m: None).start()
    try:
        first = keeper.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: keeper.pid != first)
        assert reaped(first) and keeper.pauses == [0.05]
    finally:
        keeper.stop()


def test_the_pause_doubles_while_it_keeps_dying_and_starts_over_once_it_lived():
    said: list[str] = []
    keeper = Supervisor(python("pass"), first_backoff_s=0.02, max_backoff_s=0.1, say=said.append).start()
    wait_for(lambda: len(keeper.pauses) >= 5)
    keeper.stop()
    assert keeper.pauses[:5] == [0.02, 0.04, 0.08, 0.1, 0.1]
    assert said[0] == "worker exited (0); restarting it in 0.02 s"
    assert keeper.next_pause(lived_s=keeper.healthy_after_s) == 0.02


def test_stop_sends_sigterm_and_waits_for_the_process_to_finish(tmp_path):
    done, ready = tmp_path / "done", tmp_path / "ready"
    code = ("import signal, sys, time, pathlib\n"
            "def bye(*_):\n    time.sleep(0.3); pathlib.Path(sys.argv[1]).write_text('clean'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\npathlib.Path(sys.argv[2]).touch()\ntime.sleep(60)\n")
    keeper = Supervisor([*python(code), str(done), str(ready)], say=lambda _m: None).start()
    wait_for(ready.exists)
    pid = keeper.pid
    assert keeper.stop() == 0 and done.read_text() == "clean" and reaped(pid)
    assert keeper.pauses == []  # not restarted after the stop


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    ready = tmp_path / "ready"
    code = (f"import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen({str(ready)!r}, 'w').close()\n"
            "time.sleep(60)\n")
    keeper = Supervisor(python(code), stop_timeout_s=0.3, say=lambda _m: None).start()
    wait_for(ready.exists)
    assert keeper.stop() == -signal.SIGKILL


def test_with_a_log_the_output_goes_there_and_not_to_the_terminal(tmp_path, capfd):
    """`mol up` logs its worker this way, so Celery's banner and warnings do not follow the dashboard's URL."""
    log = tmp_path / "worker.log"
    log.write_text("an earlier start\n")
    said: list[str] = []
    code = "import sys; print('banner'); print('a warning', file=sys.stderr)"
    keeper = Supervisor(python(code), first_backoff_s=0.02, say=said.append, log=log).start()
    wait_for(lambda: len(keeper.pauses) >= 2)
    keeper.stop()
    assert log.read_text().count("banner\n") >= 2 and log.read_text().count("a warning\n") >= 2  # restarts append
    assert Path(f"{log}.1").read_text() == "an earlier start\n"
    assert capfd.readouterr() == ("", "")
    assert said[0] == f"worker exited (0); restarting it in 0.02 s (its log: {log})"


def sigint_stand_in(ready: Path) -> list[str]:
    """A worker stand-in that dies by SIGINT whenever it arrives, once it has touched ``ready``. Sent before, a SIGINT
    can land in the interpreter's start-up (importing ``site``), which then exits 1, not -SIGINT: on a loaded
    machine this test saw that as a worker that crashed, and restarted it."""
    return python(f"import pathlib, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n"
                  f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)\n")


def test_a_ctrl_c_that_reached_the_worker_too_is_no_restart(monkeypatch, tmp_path):
    monkeypatch.setattr("api.supervisor.CTRL_C_GRACE_S", 30.0)  # `mol up`'s stop ends the wait, however late it comes
    said: list[str] = []
    keeper = Supervisor(sigint_stand_in(tmp_path / "first"), first_backoff_s=0.05, say=said.append).start()
    wait_for(lambda: (tmp_path / "first").exists())
    first = keeper.pid
    os.kill(first, signal.SIGINT)  # the terminal's Ctrl-C: `mol up` stops right after
    wait_for(lambda: keeper.proc.poll() is not None)
    time.sleep(0.1)
    keeper.stop()
    assert keeper.pid == first and keeper.proc.returncode == -signal.SIGINT
    assert said == [] and keeper.pauses == []  # not started again, and no "restarting it" on the way out
    monkeypatch.setattr("api.supervisor.CTRL_C_GRACE_S", 0.3)
    alone = Supervisor(sigint_stand_in(tmp_path / "alone"), first_backoff_s=0.05, say=said.append).start()
    try:
        wait_for(lambda: (tmp_path / "alone").exists())
        os.kill(alone.pid, signal.SIGINT)  # a SIGINT to the worker alone: restarted once the grace has passed
        wait_for(lambda: alone.pauses == [0.05])
        assert said == [f"worker exited ({-signal.SIGINT}); restarting it in 0.05 s"]
    finally:
        alone.stop()
