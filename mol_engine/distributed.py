"""Running under torchrun: process group, per-rank device, the DDP-wrapped step, and cross-rank sums.

With one process every helper is a no-op, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .data import Batch
from .objective import TokenSums, batch_losses


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

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag``, on every rank."""
        if self.size == 1:
            return flag
        tensor = torch.tensor([int(flag)], device=device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def join_world(device_type: str) -> World:
    """The process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA; else one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 and not dist.is_initialized():
        return World()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        owns = True
    return World(dist.get_rank(), dist.get_world_size(), owns)


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, the GPU of this rank (LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


class StepLosses(nn.Module):
    """``forward(batch) -> TokenSums`` around the model: the module DDP wraps so gradients are all-reduced."""

    def __init__(self, model: nn.Module, **loss_kwargs) -> None:
        super().__init__()
        self.model = model
        self.loss_kwargs = loss_kwargs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, is_general: torch.Tensor,
                general_rows: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> TokenSums:
        return batch_losses(self.model, Batch(input_ids, attention_mask, is_general, general_rows, position_ids),
                            **self.loss_kwargs)


def wrap(model: nn.Module, world: World, device: torch.device, **loss_kwargs) -> nn.Module:
    """The step module: plain with one process, DistributedDataParallel with several."""
    step = StepLosses(model, **loss_kwargs)
    if world.size == 1:
        return step
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
