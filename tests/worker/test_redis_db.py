"""Two test runs on one machine never flush each other's Redis database (tests/redis_db.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_db import claim_redis_db

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys; from tests.redis_db import claim_redis_db\n"
        "print(claim_redis_db({k: v for k, v in [a.split('=') for a in sys.argv[1:]]}), flush=True)\n"
        "sys.stdin.read()\n")  # holds its claim until the test closes its stdin


def other_run(*env: str) -> subprocess.Popen:
    """Another test run's process, which claims a database (``env``: KEY=VALUE) and holds it."""
    return subprocess.Popen([sys.executable, "-c", HOLD, *env], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_run_on_the_machine_gets_another_database_and_an_asked_for_one_in_use_is_refused(redis_db):
    assert claim_redis_db() == redis_db  # this run's claim, the same for the whole session
    other = other_run()
    try:
        theirs = int(other.stdout.readline())
        assert theirs != redis_db and theirs != 0
        with pytest.raises(RuntimeError, match=f"MOL_TEST_REDIS_DB={theirs}: another test run on this machine"):
            claim_redis_db({"MOL_TEST_REDIS_DB": str(theirs)})
        refused = other_run(f"MOL_TEST_REDIS_DB={redis_db}")
        assert refused.wait(30) == 1 and f"uses Redis database {redis_db}" in refused.stderr.read()
    finally:
        other.stdin.close()
        other.wait(30)
    # once that run has ended, its database is free again: the same process takes it when asked
    assert other_run(f"MOL_TEST_REDIS_DB={theirs}").communicate("", timeout=30)[0].strip() == str(theirs)
