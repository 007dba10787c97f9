"""The demo's pretraining, run by the engine's own :func:`mol_engine.train.train`: next-token cross-entropy on the
English pretraining text alone (method ``domain_only``: no general corpus, no reference), on the CPU in float32,
so that a build's bytes depend only on what its key names (:mod:`.cache`), whatever the machine's accelerator.

The model directory is trained in place: its weights are replaced by those of the run's final checkpoint; the
run itself (its token store, checkpoint and optimizer state) lives in a scratch directory removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..callbacks import Callback
from ..spec import JobSpec
from .corpora import write_jsonl
from .progress import BuildStopped

DEFAULT_PRETRAIN_STEPS = 400
BLOCK_SIZE = 128  # tokens per training row
BATCH_SIZE = 16  # rows per step
LR = 6e-3  # a tiny model from scratch takes a learning rate far above fine-tuning's
WEIGHT_DECAY = 0.1
HELDOUT_FRACTION = 0.01  # pretraining documents held out for the run's own evaluation (at step 0 and the last)


def pretrain_spec(model_dir: Path, text_file: Path, steps: int, seed: int) -> JobSpec:
    """The job that pretrains the model in ``model_dir`` on ``text_file`` for ``steps`` steps: warm-up over the
    first tenth, cosine decay to a tenth of :data:`LR`; one evaluation (one batch) at the start and the end, no
    samples, one checkpoint at the end."""
    return JobSpec(
        name="mol-demo-pretraining", base_model=str(model_dir), domain_data=[str(text_file)], method="domain_only",
        seq_len=BLOCK_SIZE, batch_size=BATCH_SIZE, lr=LR, warmup_steps=max(1, steps // 10), schedule="cosine",
        min_lr_ratio=0.1, weight_decay=WEIGHT_DECAY, max_grad_norm=1.0, max_steps=steps, eval_every=steps,
        eval_batches=1, heldout_fraction=HELDOUT_FRACTION, sample_prompts=[], save_every=steps, keep_checkpoints=1,
        seed=seed, device="cpu", precision="fp32", compile="off", attention="sdpa",
    )


class PretrainProgress(Callback):
    """Hands each step's loss to ``on_step(step, loss)``, keeps the losses of the last tenth of the ``steps``, and
    stops the run when ``should_stop()`` says so."""

    def __init__(self, steps: int, on_step: Callable[[int, float], None], should_stop: Callable[[], bool]) -> None:
        self.steps, self.on_step, self.stop = steps, on_step, should_stop
        self.tail: list[float] = []

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if "train/loss" not in metrics:  # an evaluation's figures
            return
        if step > self.steps - max(1, self.steps // 10):
            self.tail.append(metrics["train/loss"])
        self.on_step(step, metrics["train/loss"])

    def should_stop(self) -> bool:
        return self.stop()

    @property
    def final_loss(self) -> float:
        """The mean loss over the last tenth of the steps (at least one)."""
        return sum(self.tail) / len(self.tail)


def pretrain(
    model_dir: Path,
    documents: Sequence[str],
    steps: int,
    *,
    seed: int = 0,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> float:
    """Pretrains the model in ``model_dir`` in place on ``documents`` (:func:`pretrain_spec`); returns the final
    loss, the mean over the last tenth of the steps. ``on_step(step, loss)`` is called after every step; once
    ``should_stop()`` is true the run ends with :class:`BuildStopped`. The global RNG is left as it was."""
    import torch

    from ..train import train

    with tempfile.TemporaryDirectory(prefix=".pretraining-", dir=model_dir.parent) as scratch:
        text_file = Path(scratch) / "pretrain.jsonl"
        write_jsonl(text_file, ({"text": doc} for doc in documents))
        progress = PretrainProgress(steps, on_step, should_stop)
        with torch.random.fork_rng(devices=[]), _one_process():
            result = train(pretrain_spec(model_dir, text_file, steps, seed), Path(scratch) / "run", [progress])
        if result.status == "cancelled":
            raise BuildStopped("the demo build was stopped")
        shutil.copyfile(result.checkpoint / "model" / "model.safetensors", model_dir / "model.safetensors")
    return progress.final_loss


@contextlib.contextmanager
def _one_process() -> Iterator[None]:
    """The with-block sees ``WORLD_SIZE=1``: under torchrun every rank asks for the demo and one builds it while
    the others wait on its lock, so its :func:`train` must not join the job's process group (it would wait for
    ranks that never come)."""
    world_size = os.environ.get("WORLD_SIZE")
    if world_size in (None, "1"):
        yield
        return
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        os.environ["WORLD_SIZE"] = world_size
