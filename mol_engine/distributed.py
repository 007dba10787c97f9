"""Running under torchrun: process group, per-rank device, how the model is wrapped (DDP or FSDP2), and
cross-rank sums.

With one process every helper is a no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .batches import Batch
from .callbacks import Cancelled
from .modeling import compile_layers, decoder_layers, load_model
from .objective import TokenSums, batch_losses
from .reference import FrozenCopyReference
from .sharded_load import load_sharded
from .spec import DistributedMode


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    owns_group: bool = False  # this run initialised the process group and ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Element-wise sum of ``values`` over all ranks, float64 on ``device``; with one process ``values`` as they
        are. Nothing is read back: the caller reads the result with whatever else it reads."""
        if self.size == 1:
            return values
        if values.device.type == "cpu" and device.type == "cuda":
            values = values.pin_memory()  # an asynchronous copy: from pageable memory it would wait for the device
        tensor = values.to(device, torch.float64, non_blocking=True)
        dist.all_reduce(tensor)
        return tensor

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag``, on every rank."""
        return bool(self.agree_on(int(flag), device))

    def agree_on(self, choice: int, device: torch.device) -> int:
        """Rank 0's ``choice`` (a small int: one of several answers), on every rank, in one broadcast."""
        if self.size == 1:
            return choice
        tensor = torch.tensor([choice], device=device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


DIST_TIMEOUT_ENV = "MOL_DIST_TIMEOUT_S"
DIST_TIMEOUT_S = 1800.0  # its default: the longest a rank waits in one collective for the others
MARKER_POLL_S = 0.2


def dist_timeout() -> timedelta:
    """How long a collective waits for every rank: ``MOL_DIST_TIMEOUT_S`` seconds (default 1800). No long work
    (a cache build, self-sampling, a token store) sits behind a collective (:func:`main_rank_first`), so this
    bounds the wait for a stuck or dead rank only."""
    value = os.environ.get(DIST_TIMEOUT_ENV, str(DIST_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{DIST_TIMEOUT_ENV}: expected a number of seconds above 0, got '{value}'")
    return timedelta(seconds=seconds)


def join_world(device_type: str) -> World:
    """The process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA, with
    :func:`dist_timeout`; else one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 and not dist.is_initialized():
        return World()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=dist_timeout())
        owns = True
    return World(dist.get_rank(), dist.get_world_size(), owns)


@contextlib.contextmanager
def main_rank_first(world: World, marker: Path) -> Iterator[None]:
    """The with-block runs on rank 0, then on the other ranks once rank 0 is through it (rank 0 builds what they
    read: a reference cache, a self-sampled corpus, token stores). They poll ``marker`` rather than wait in a
    collective: the work can take longer than any process group timeout (NCCL's default is 10 minutes); if rank 0
    dies, torchrun ends them. Rank 0 leaves the block without waiting for the others.

    When the block raises :class:`Cancelled` on rank 0 (the run was cancelled while it worked), rank 0 leaves a
    note next to ``marker`` and the waiting ranks raise :class:`Cancelled` too: every rank ends the run cancelled."""
    if world.size == 1:
        yield
        return
    if world.is_main:
        marker.unlink(missing_ok=True)
        cancel_note(marker).unlink(missing_ok=True)
    world.barrier()  # quick: every rank is past the unlink, so a marker seen from here on is this run's
    if not world.is_main:
        wait_for_marker(marker)
    try:
        yield
    except Cancelled:
        if world.is_main:
            cancel_note(marker).touch()
        raise
    if world.is_main:
        marker.touch()


def cancel_note(marker: Path) -> Path:
    """The file rank 0 leaves instead of ``marker`` when the run was cancelled before it got there."""
    return marker.with_name(marker.name + ".cancelled")


def wait_for_marker(marker: Path) -> None:
    """Poll until ``marker`` exists; raise :class:`Cancelled` if rank 0 left its :func:`cancel_note` instead."""
    note = cancel_note(marker)
    while not marker.is_file():
        if note.is_file():
            raise Cancelled("cancelled before step 1 (rank 0 stopped while the others waited for it)")
        time.sleep(MARKER_POLL_S)


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, the GPU of this rank (LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


class StepLosses(nn.Module):
    """``forward(batch) -> TokenSums`` around the model: the module DDP wraps, and FSDP's root.

    It has no ``no_sync``: under FSDP every micro-batch's backward reduce-scatters its gradients, so a rank only
    ever holds its shard of them (skipping the reduce-scatter, FSDP's ``set_requires_gradient_sync(False)``, would
    keep unsharded fp32 gradients of the whole model on every rank); DDP's own ``no_sync`` serves DDP.
    """

    def __init__(self, model: nn.Module, **loss_kwargs) -> None:
        super().__init__()
        self.model = model
        self.loss_kwargs = loss_kwargs

    def forward(self, batch: Batch) -> TokenSums:
        return batch_losses(self.model, batch, **self.loss_kwargs)


def uses_fsdp(mode: DistributedMode, world: World, lora: bool) -> bool:
    """Whether the model is sharded with FSDP2: several processes, and ``fsdp`` asked or ``auto`` with full
    fine-tuning (LoRA's trainable part is small, so DDP's full replica costs little more than the base)."""
    return world.size > 1 and (mode == "fsdp" or (mode == "auto" and not lora))


def wrap(model: nn.Module, world: World, device: torch.device, mode: DistributedMode = "auto", lora: bool = False,
         root: StepLosses | None = None, **loss_kwargs) -> nn.Module:
    """The step module: plain with one process, FSDP2-sharded or DistributedDataParallel with several. ``root``:
    the step module :func:`load_for_fsdp` already sharded ``model`` under (it gets the losses' arguments)."""
    step = root if root is not None else StepLosses(model)
    step.loss_kwargs = loss_kwargs
    if world.size == 1:
        return step
    if uses_fsdp(mode, world, lora):
        reference = loss_kwargs.get("reference")
        if isinstance(reference, FrozenCopyReference) and not is_sharded(reference.model):
            shard_frozen(reference.model, device)
        return step if is_sharded(step) else parallelize(step, model, device)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)


def compute_weights_dtype(master: torch.dtype, device: torch.device, sharded: bool) -> torch.dtype:
    """The dtype the trained weights have when the model computes with them: bf16 where FSDP gathers them so
    (:func:`parallelize` on CUDA), else the ``master`` weights' own (autocast casts them op by op)."""
    return torch.bfloat16 if sharded and device.type == "cuda" else master


def parallelize(root: nn.Module, model: nn.Module, device: torch.device) -> nn.Module:
    """``root`` (which holds ``model``) with FSDP2 applied, as torchtitan's ``parallelize``: ``fully_shard`` on
    each decoder layer, then on ``root``, whose group keeps the rest (embeddings, final norm, a tied or untied
    head). On CUDA parameters are all-gathered in bf16 and gradients reduced in fp32. Returns ``root``.

    The root group stays gathered from the root's forward until the end of backward, so the loss can call the
    head chunk by chunk; code that calls the model without the root's forward runs inside :func:`gathered`.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    # the root's inputs are token ids, masks and a batch's cached top-k targets, which stay float32
    fully_shard(root, mp_policy=dataclasses.replace(policy, cast_forward_inputs=False))
    return root


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gathered(root: nn.Module) -> Iterator[None]:
    """The root group of an FSDP-sharded ``root`` all-gathered (layers gather on their own forward), for
    evaluation and generation, which call the model without the root's forward; a no-op otherwise."""
    if not is_sharded(root):
        yield
        return
    from torch.distributed.fsdp import fully_shard

    fully_shard.state(root)._lazy_init()  # the root is decided by the first forward: make it this one
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the optimizer's writes land before another stream gathers them
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def shard_frozen(model: nn.Module, device: torch.device) -> nn.Module:
    """A frozen model (the reference's base copy) sharded like the trained one (:func:`parallelize_frozen`), its
    root group gathered for good (:func:`keep_root_gathered`)."""
    return keep_root_gathered(parallelize_frozen(model, device))


def parallelize_frozen(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` sharded as :func:`parallelize` shards the trained one, each decoder layer prefetching the next
    one's all-gather as its forward starts. The frozen model runs outside FSDP's root protocol (its root's forward is
    never called), so nothing else would overlap a layer's all-gather with the previous layer's compute."""
    layers = decoder_layers(model)  # before fully_shard renames their classes (FSDP<name>)
    parallelize(model, model, device)
    for layer, following in itertools.pairwise(layers):
        layer.set_modules_to_forward_prefetch([following])
    return model


def keep_root_gathered(model: nn.Module) -> nn.Module:
    """The sharded frozen ``model`` with its root group (embeddings, norm, head) gathered for good: each call runs
    the body and the head apart, never the root's forward."""
    from torch.distributed.fsdp import fully_shard

    fully_shard.state(model)._lazy_init()
    model.unshard()
    return model


def load_for_fsdp(path: str, device: torch.device, dtype: torch.dtype = torch.float32, attention: str | None = None,
                  compiled: bool = False) -> tuple[nn.Module, StepLosses]:
    """(model, its step module): the causal LM in ``path`` (``attn_implementation`` ``attention``, its decoder layers
    compiled when ``compiled``, before they are sharded) and the :class:`StepLosses` FSDP's root, sharded by
    :func:`parallelize` on the meta device, each rank then reading only its shards (mol_engine.sharded_load); a
    checkpoint that cannot be read so is loaded whole on every rank, then sharded."""
    def shard(model: nn.Module) -> nn.Module:
        return parallelize(StepLosses(compile_layers(model) if compiled else model), model, device)

    loaded = load_sharded(path, device, dtype, shard, attention=attention)
    if loaded is not None:
        return loaded
    model = load_model(path, device, dtype, attention=attention)
    return model, shard(model)


def load_frozen_for_fsdp(path: str, device: torch.device, dtype: torch.dtype, matmul_dtype: torch.dtype | None,
                         attention: str | None, compiled: bool) -> nn.Module:
    """The base in ``path`` as a sharded frozen copy (:func:`shard_frozen`), loaded as :func:`load_for_fsdp` loads
    the trained model: each rank reads only its shards. A ``reference.Loader`` (the reference's loader under
    FSDP). Its body/head split is not checked again: :func:`load_for_fsdp` checked the same files."""
    def shard(model: nn.Module) -> nn.Module:
        return parallelize_frozen(compile_layers(model) if compiled else model, device)

    loaded = load_sharded(path, device, dtype, shard, matmul_dtype, verify=False, attention=attention)
    if loaded is None:
        return keep_root_gathered(shard(load_model(path, device, dtype, matmul_dtype, attention=attention)))
    return keep_root_gathered(loaded[0])


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """``{"model": ..., "optimizer": ...}``: the trainable weights and the optimizer state keyed by parameter name,
    each rank holding only its shards (DTensors under FSDP; whole tensors with one process or DDP), for
    ``torch.distributed.checkpoint``. Frozen weights (a LoRA base) are left out: they come from the base model."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    frozen = frozen_names(model)
    return {"model": {name: w for name, w in weights.items() if name not in frozen}, "optimizer": optim}


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, dict]) -> None:
    """Load a :func:`sharded_state` (filled from a checkpoint, possibly written by another number of ranks) into
    ``model`` and ``optimizer``, sharded or not: each rank keeps its part. Raises ValueError when the weights do not
    match the model's trainable ones."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    result = set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                            options=StateDictOptions(strict=False))  # the frozen weights stay the base's
    missing = set(result.missing_keys) - frozen_names(model)
    if missing or result.unexpected_keys:
        raise ValueError(f"the checkpoint's weights do not match the model (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(result.unexpected_keys)[:3]})")


def frozen_names(model: nn.Module) -> set[str]:
    """The names of ``model``'s frozen parameters, every alias of a tied one included (a LoRA base's tied head)."""
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                    optimizer_state: dict) -> None:
    """Load full (unsharded) model weights and an ``optimizer.state_dict()``-numbered optimizer state into an
    FSDP-sharded model and its optimizer: each rank keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    names = {id(p): name for name, p in model.named_parameters()}
    fqns = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    named = {"state": {fqns[int(i)]: s for i, s in optimizer_state["state"].items()},
             "param_groups": [{**g, "params": [fqns[i] for i in g["params"]]} for g in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=options)
