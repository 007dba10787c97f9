"""Experiment trackers (``report_to``, as in Hugging Face's Trainer): TensorBoard, MLflow and Weights & Biases.

Each is a :class:`~mol_engine.callbacks.Callback` that rank 0 runs (``train`` hands callbacks to rank 0 only).
They write under the run directory by default and never reach the network unless the user configured it:
TensorBoard event files in ``RUN/tensorboard``, an MLflow file store ``RUN/mlruns`` (unless
``MLFLOW_TRACKING_URI`` is set), a wandb run in offline mode in ``RUN/wandb`` (unless ``WANDB_MODE`` is set).
The packages are optional extras (``pip install mol-studio[trackers]``): asking for one that is missing fails
the run at its start, before any work, with a message that names the extra.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .callbacks import Callback
from .spec import Tracker

log = logging.getLogger(__name__)
EXTRA = "pip install 'mol-studio[trackers]'"
# the module each one imports
PACKAGE: dict[Tracker, str] = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
# the folder each one writes in the run directory (wandb makes its own ``wandb`` folder in the directory it is given)
OUTPUT_DIRS: dict[Tracker, str] = {"tensorboard": "tensorboard", "mlflow": "mlruns", "wandb": "wandb"}


class TrackerMissing(RuntimeError):
    """A tracker in ``report_to`` whose package is not installed."""


class TrackerCallback(Callback):
    """A tracker: receives metric points (and events); :meth:`close` flushes and ends its run."""

    def close(self) -> None:
        """Flush what was logged and end the tracker's run."""


class TensorBoardTracker(TrackerCallback):
    """Scalars per step in TensorBoard event files under ``log_dir``; events as text."""

    def __init__(self, log_dir: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir, self.writer = log_dir, SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("spec", f"```\n{_flat_text(config)}\n```", 0)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def on_event(self, event: dict[str, Any]) -> None:
        self.writer.add_text(f"events/{event['kind']}", str(event["message"]), event["step"])

    def on_rewind(self, step: int) -> None:
        """A resumed run repeats the steps after ``step``: TensorBoard hides what was logged past it."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer.close()
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step + 1)

    def close(self) -> None:
        self.writer.close()


class MlflowTracker(TrackerCallback):
    """Metrics per step and the spec as parameters in one MLflow run; a resumed job continues the same run."""

    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri(out_dir))
        run_id_file = out_dir / "mlflow_run_id"
        if run_id_file.exists():
            self.run_id = run_id_file.read_text().strip()
        else:
            self.run_id = self._new_run(config)
            run_id_file.write_text(self.run_id)

    def _new_run(self, config: dict[str, Any]) -> str:
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "mol-studio")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self.client.create_run(experiment_id, run_name=str(config.get("name", "mol-job")))
        params = [self.mlflow.entities.Param(key, _short(value)) for key, value in _flatten(config).items()]
        self.client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [self.mlflow.entities.Metric(name, float(value), now, step) for name, value in metrics.items()
                 if value is not None]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_event(self, event: dict[str, Any]) -> None:
        if event["kind"] in ("succeeded", "cancelled"):
            self.client.set_tag(self.run_id, "mol.status", event["kind"])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def mlflow_tracking_uri(out_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a file store in ``RUN/mlruns``. MLflow 3 keeps its file store in
    maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``; a local store per run needs nothing more (a database
    store needs the full ``mlflow`` package), so that opt-in is set for our default only."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (out_dir / OUTPUT_DIRS["mlflow"]).resolve().as_uri()


class WandbTracker(TrackerCallback):
    """Metrics per step and the spec as config in a wandb run, offline unless ``WANDB_MODE`` says otherwise;
    a resumed job continues the same run (its id is kept in the run directory)."""

    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        run_id_file = out_dir / "wandb_run_id"
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else uuid.uuid4().hex[:8]
        run_id_file.write_text(run_id)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mol-studio"), name=config.get("name"),
                              id=run_id, resume="allow", config=config, dir=str(out_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(console="off", quiet=True, x_disable_stats=True))

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def _tensorboard(out: Path, config: dict[str, Any]) -> TrackerCallback:
    return TensorBoardTracker(out / OUTPUT_DIRS["tensorboard"], config)


BUILDERS: dict[str, Callable[[Path, dict[str, Any]], TrackerCallback]] = {
    "tensorboard": _tensorboard, "mlflow": MlflowTracker, "wandb": WandbTracker}


def check_trackers(report_to: list[str]) -> None:
    """Raises :class:`TrackerMissing` naming every tracker in ``report_to`` whose package is not installed."""
    missing = [name for name in report_to if importlib.util.find_spec(PACKAGE[name]) is None]
    if missing:
        raise TrackerMissing(f"report_to asks for {', '.join(missing)}, not installed here: {EXTRA}")


def make_trackers(report_to: list[str], out_dir: str | Path, config: dict[str, Any]) -> list[TrackerCallback]:
    """One tracker per name in ``report_to``, each writing under ``out_dir``, with ``config`` (the spec) logged."""
    check_trackers(report_to)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [BUILDERS[name](out, config) for name in dict.fromkeys(report_to)]


def close_trackers(trackers: list[TrackerCallback]) -> None:
    """Close each tracker; one that fails to close does not keep the others from closing."""
    for tracker in trackers:
        try:
            tracker.close()
        except Exception:  # a tracker's flush must not turn a finished run into a failed one
            log.exception("closing the %s tracker failed", type(tracker).__name__)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"rank": 16}}`` -> ``{"lora.rank": 16}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value: Any) -> str:
    """A parameter value as MLflow stores it (at most 6000 characters)."""
    return str(value)[:6000]


def _flat_text(config: dict[str, Any]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in _flatten(config).items())
