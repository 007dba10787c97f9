"""store/lineage.py without a database: what ``best``, ``final`` and ``step-N`` resolve to among a run's
checkpoints, why one cannot be continued from, and the original base a chain of continues keeps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from store.lineage import (
    CheckpointRef,
    CheckpointUnavailable,
    Lineage,
    ParentNotFound,
    checkpoint_name,
    resolve_parent,
)
from store.settings import Settings


@pytest.fixture
def settings(tmp_path) -> Settings:
    """A MOL_HOME whose job ``job_p`` kept step-2 (complete, the best) and step-4 (no state file: being written)."""
    settings = Settings(home=tmp_path / "home", demo_model=False)
    run = settings.run_dir("job_p")
    for step, complete in ((2, True), (4, False)):
        run.checkpoint(step).mkdir(parents=True)
        if complete:
            (run.checkpoint(step) / "trainer_state.json").write_text(json.dumps({"step": step}))
    run.best_file.write_text(json.dumps({"step": 2}))
    return settings


def job(status: str = "succeeded", **fields) -> SimpleNamespace:
    """A stand-in for the parent's row, as store/lineage.py reads it."""
    row = {"id": "job_p", "owner": "alice", "status": status, "spec": {"base_model": "tiny"},
           "original_base_model": None}
    return SimpleNamespace(**(row | fields))


@pytest.mark.parametrize("name, status, expect", [("best", "running", "step-2"), ("final", "succeeded", "step-2"),
                                                  ("step-2", "running", "step-2"), ("step-02", "failed", "step-2")])
def test_a_reference_resolves_to_a_complete_checkpoint(settings, name, status, expect):
    assert checkpoint_name(settings, job(status), CheckpointRef("job_p", name)) == expect


@pytest.mark.parametrize("name, status, why", [("final", "running", "is running; only a job that succeeded"),
                                               ("step-4", "succeeded", "step-4 of job 'job_p' is incomplete"),
                                               ("step-6", "succeeded", "step-6 of job 'job_p' no longer exists")])
def test_a_checkpoint_that_is_not_there_says_which(settings, name, status, why):
    with pytest.raises(CheckpointUnavailable, match=why) as raised:
        checkpoint_name(settings, job(status), CheckpointRef("job_p", name))
    assert str(raised.value).startswith(f"job:job_p@{name}: ")


def test_no_best_yet_is_unavailable(settings):
    settings.run_dir("job_p").best_file.unlink()
    with pytest.raises(CheckpointUnavailable, match="has no best checkpoint"):
        checkpoint_name(settings, job(), CheckpointRef("job_p", "best"))


def test_a_continue_of_a_continue_keeps_the_first_base_and_another_owner_sees_nothing(settings):
    rows = {"job_p": job(original_base_model="demo", spec={"base_model": "job:job_gp@best"})}
    db = SimpleNamespace(get=lambda _model, key: rows.get(key))
    assert resolve_parent(db, settings, "alice", CheckpointRef("job_p", "best")) == Lineage("job_p", "step-2", "demo")
    rows["job_p"].original_base_model = None  # a parent trained from a model: that model is the original
    rows["job_p"].spec = {"base_model": "tiny"}
    assert resolve_parent(db, settings, "alice", CheckpointRef("job_p", "best")).original_base_model == "tiny"
    for owner, ref in (("bob", CheckpointRef("job_p", "best")), ("alice", CheckpointRef("job_x", "best"))):
        with pytest.raises(ParentNotFound):
            resolve_parent(db, settings, owner, ref)
