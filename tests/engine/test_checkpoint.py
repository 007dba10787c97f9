"""Checkpoint retention, a full disk while writing one, and resume reading only complete checkpoints."""

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer

from mol_engine import checkpoint
from mol_engine.checkpoint import CheckpointError, load_checkpoint, prune_checkpoints, save_checkpoint
from mol_engine.run_dir import RunDir
from mol_engine.train import train

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def saver(tiny_model_dir, tmp_path):
    """save(step, keep=None, protect=()) -> the path of a real checkpoint of the tiny model under tmp_path."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def save(step: int, keep: int | None = None, protect=()) -> Path:
        return save_checkpoint(tmp_path, step, model, tokenizer, optimizer, scheduler, {"data": {}}, keep=keep,
                               protect=protect)

    save.restore = lambda path: load_checkpoint(path, model, optimizer, scheduler, lora=False)
    return save


def names(out: Path) -> list[str]:
    return [p.name for p in RunDir(out).checkpoint_dirs()]


def test_retention_keeps_the_newest_and_the_protected(saver, tmp_path):
    for step in range(1, 6):
        saver(step, keep=2, protect={2})
    assert names(tmp_path) == ["step-2", "step-4", "step-5"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4", "step-5"]


def test_no_limit_keeps_all_and_the_newest_is_never_pruned(saver, tmp_path):
    for step in (1, 2, 3):
        saver(step)
    assert names(tmp_path) == ["step-1", "step-2", "step-3"]
    assert [p.name for p in prune_checkpoints(tmp_path, keep=0)] == ["step-1", "step-2"]
    assert names(tmp_path) == ["step-3"]


@pytest.mark.parametrize("error", [
    DISK_FULL,
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),  # as 0.8 says it
])
def test_full_disk_fails_that_checkpoint_and_keeps_the_earlier_ones(saver, tmp_path, monkeypatch, error):
    saver(1)
    saver(2)

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(CheckpointError, match=r"^disk full while writing checkpoint step-3 under .*checkpoints: "
                       r"free space [\d.]+ \w+ \(checkpoints kept: step-1, step-2\)$"):
        saver(3, keep=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1", "step-2"]  # no temp, no prune
    monkeypatch.undo()
    assert RunDir(tmp_path).latest_checkpoint().name == "step-2"
    assert saver.restore(RunDir(tmp_path).latest_checkpoint())["step"] == 2


def test_other_write_errors_name_themselves(saver, tmp_path, monkeypatch):
    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "write_text", denied)
    with pytest.raises(CheckpointError, match=r"Permission denied.* while writing checkpoint step-1 .*kept: none"):
        saver(1)
    assert not list((tmp_path / "checkpoints").iterdir())


def test_resume_reads_only_complete_checkpoints(saver, tmp_path):
    for step in (1, 2):
        saver(step)
    root = tmp_path / "checkpoints"
    (root / ".step-5-x1y2").mkdir()  # a writer killed before its rename
    (root / ".step-5-x1y2" / checkpoint.STATE_FILE).write_text("{}")
    (root / "step-4" / "model").mkdir(parents=True)  # a step directory without its state file
    truncated = root / "step-3"
    truncated.mkdir()
    (truncated / checkpoint.STATE_FILE).write_text('{"step": 3, "optimizer_gr')
    assert RunDir(tmp_path).latest_checkpoint().name == "step-2"
    assert names(tmp_path) == ["step-1", "step-2", "step-3"]  # listed (it has a state file), never resumed from
    saver(6, keep=1)
    assert not (root / ".step-5-x1y2").exists()  # the next save clears what a killed writer left


def test_run_fails_cleanly_on_a_full_disk_then_resumes(make_spec, tmp_path, monkeypatch):
    spec = make_spec(max_steps=6, save_every=2, keep_checkpoints=1)
    real, calls = checkpoint.save_file, []

    def fills_up(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:  # two files per checkpoint: step-2 and step-4 fit, step-6 does not
            raise DISK_FULL
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fills_up)
    with pytest.raises(CheckpointError, match=r"step-6 .*\(checkpoints kept: step-4\)$"):
        train(spec, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-4"]
    monkeypatch.undo()
    result = train(spec, tmp_path, resume=True)
    assert result.status == "succeeded" and result.checkpoint.name == "step-6"
    assert names(tmp_path) == ["step-6"]
    assert json.loads((result.checkpoint / checkpoint.STATE_FILE).read_text())["step"] == 6


def test_default_retention_keeps_three(make_spec, tmp_path):
    result = train(make_spec(max_steps=5, save_every=1, eval_every=5), tmp_path)
    assert make_spec().keep_checkpoints == 3 and names(tmp_path) == ["step-3", "step-4", "step-5"]
    assert result.checkpoint.name == "step-5"
