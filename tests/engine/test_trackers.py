"""report_to: each tracker, offline, receives the run's metrics; what it logged is read back from its files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from mol_engine import trackers
from mol_engine.callbacks import Callback
from mol_engine.trackers import TrackerMissing, make_trackers
from mol_engine.train import train


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing a developer configured for their own trackers reaches these runs."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def tensorboard_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def mlflow_history(out: Path, key: str) -> tuple[dict[str, str], list[tuple[int, float]]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    run = client.get_run((out / "mlflow_run_id").read_text())
    return run.data.params, [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def wandb_history(out: Path) -> list[dict]:
    """The history rows of the offline run: its .wandb file is a LevelDB-style log of protobuf records (32 KiB
    blocks, a 7-byte header per chunk), which wandb's Go core writes and no Python reader of theirs reads."""
    from wandb.proto import wandb_internal_pb2

    (path,) = out.glob("wandb/offline-run-*/run-*.wandb")
    raw, pos, chunk, rows = path.read_bytes(), 7, b"", []  # after the file's own 7-byte header
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        chunk, pos = chunk + raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record.FromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            chunk = b""
    return rows


def test_each_tracker_receives_the_runs_metrics_offline(make_spec, tmp_path):
    spec = make_spec(max_steps=2, eval_every=2, save_every=2, report_to=["tensorboard", "mlflow", "wandb"])
    last_loss = train(spec, tmp_path).metrics["train/loss"]

    board = tensorboard_scalars(tmp_path / "tensorboard", "train/loss")
    assert [step for step, _ in board] == [1, 2]
    assert board[1][1] == pytest.approx(last_loss, rel=1e-6)
    assert [step for step, _ in tensorboard_scalars(tmp_path / "tensorboard", "eval/domain_ppl")] == [0, 2]

    params, history = mlflow_history(tmp_path, "train/loss")
    assert params["method"] == "mol" and params["lora.rank"] == "16"
    assert [step for step, _ in history] == [1, 2] and history[1][1] == pytest.approx(last_loss)

    rows = wandb_history(tmp_path)
    steps_with_loss = [row["_step"] for row in rows if "train/loss" in row]
    assert steps_with_loss == [1, 2]
    assert next(row for row in rows if row["_step"] == 2)["train/loss"] == pytest.approx(last_loss)


class StopAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step, self.last = step, 0

    def on_metrics(self, step, metrics):
        self.last = step

    def should_stop(self) -> bool:
        return self.last >= self.step


def test_a_resumed_run_leaves_tensorboard_one_point_per_step(make_spec, tmp_path):
    spec = make_spec(max_steps=4, save_every=2, eval_every=100, report_to=["tensorboard"])
    assert train(spec, tmp_path, [StopAfter(3)]).status == "cancelled"  # step 3 logged, the checkpoint is step 2
    last_loss = train(spec, tmp_path, resume=True).metrics["train/loss"]
    board = tensorboard_scalars(tmp_path / "tensorboard", "train/loss")
    assert [step for step, _ in board] == [1, 2, 3, 4] and board[-1][1] == pytest.approx(last_loss, rel=1e-6)


def test_a_missing_tracker_package_fails_at_start_naming_the_extra(make_spec, tmp_path, monkeypatch):
    monkeypatch.setitem(trackers.PACKAGE, "wandb", "surely_not_installed_wandb")
    with pytest.raises(TrackerMissing, match=r"wandb.*mol-studio\[trackers\]"):
        train(make_spec(report_to=["tensorboard", "wandb"]), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was started: no tracker files, no checkpoint


def test_a_resumed_run_logs_into_the_same_mlflow_run(tmp_path):
    first = make_trackers(["mlflow"], tmp_path, {"name": "resumed"})
    first[0].on_metrics(1, {"train/loss": 2.0})
    first[0].close()
    again = make_trackers(["mlflow"], tmp_path, {"name": "resumed"})
    again[0].on_metrics(2, {"train/loss": 1.0})
    again[0].close()
    assert mlflow_history(tmp_path, "train/loss")[1] == [(1, 2.0), (2, 1.0)]


def test_report_to_accepts_only_known_trackers(make_spec):
    with pytest.raises(ValueError, match="report_to"):
        make_spec(report_to=["comet"])
    assert make_spec().report_to == []
