"""A training step reads the device once: the logged metrics (and the finiteness check folded into that read).

Every count (target tokens, positions) comes from the host batch before it moves, gathers take host-built index
tensors, and cached targets are looked up on the host. A host read is an op that makes the host wait for the
device's values: ``item``/``float``/``int``/``bool`` (``_local_scalar_dense``), ``nonzero``, ``masked_select``,
``equal``, indexing with a boolean mask, and ``tolist``/``numpy``/``cpu`` (which bypass the dispatcher). On the CPU
these are cheap, but each is a stall on a GPU; they are counted on the main thread only (the next step's batch is
built in a background thread, on the host).

Not counted: the body's own read. Eager transformers reads the attention mask (or the position ids) once per
forward to choose sdpa's causal fast path (``masking_utils.create_causal_mask``); that is the model body's, to go
with a compiled or varlen attention path, not the loss's or the loop's.
"""

import shutil
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from transformers.models.llama import modeling_llama

from mol_engine.train import setup_run, train_step

SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
            "aten.equal.default", "aten.is_nonzero.default"}


class HostReads(TorchDispatchMode):
    """Counts the ops that read the device's values on the host, on this thread."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        masks = name == "aten.index.Tensor" and any(i is not None and i.dtype == torch.bool for i in args[1])
        if name in SYNC_OPS or masks:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counted(monkeypatch):
    """A HostReads mode that also counts ``tolist``/``numpy``/``cpu`` calls made on the main thread."""
    mode, main = HostReads(), threading.main_thread()
    for method in ("tolist", "numpy", "cpu"):
        original = getattr(torch.Tensor, method)

        def wrapped(self, *args, _original=original, _name=method, **kwargs):
            if threading.current_thread() is main:
                mode.reads.append(f"Tensor.{_name}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, wrapped)
    return mode


def uncounted(owner, name: str, monkeypatch) -> None:
    """``owner.name`` runs outside the count."""
    original = getattr(owner, name)

    def call(*args, **kwargs):
        with _disable_current_modes():
            return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, call)


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize(("method", "reference", "weight"),  # auto: the KL set-point moves λ from the same read
                         [("mol", "exact", {}), ("mol", "cached", {"kl_weight": "auto", "target_general_kl": 0.05}),
                          ("cpt", "exact", {})])
def test_a_step_reads_the_device_once(make_spec, corpora, tmp_path, counted, monkeypatch, method, reference, weight):
    uncounted(modeling_llama, "create_causal_mask", monkeypatch)  # the body's read (see above)
    general = shutil.copy(corpora["general"], tmp_path / "general.jsonl")  # a cache of its own
    run = setup_run(make_spec(method=method, reference=reference, general_data=[str(general)], grad_accum=2,
                              **weight), tmp_path / "run")
    # AdamW's step counters are host tensors on a GPU (its ``item`` reads wait for nothing); on the CPU they look
    # like device reads, so the optimizer's update runs outside the count
    uncounted(run.optimizer, "step", monkeypatch)
    first = train_step(run, 1)  # warm-up: the first step builds its own batch
    counted.reads.clear()
    with counted:
        second = train_step(run, 2)
    assert counted.reads == ["Tensor.tolist"], counted.reads  # one batched read of the step's figures
    assert first.keys() == second.keys() and all(isinstance(v, (int, float)) for v in second.values())  # no tensor
