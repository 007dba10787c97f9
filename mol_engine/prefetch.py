"""The next optimizer step's micro-batches, built on the host while the current step runs.

:func:`prepare` completes a host batch with what the losses would otherwise have to read back from the device: where
its targets are (:class:`~mol_engine.batches.TargetIndex`) and the base's cached targets there. :class:`StepFeed`
draws each step's micro-batches from :class:`~mol_engine.batches.MixedBatches` in a background thread, one step
ahead; on a GPU it pins them and starts their copy to the device on a stream of its own, so the copy overlaps the
running step's kernels instead of queueing behind them. A resumed run goes on from the steps handed out.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import torch

from .batches import Batch, MixedBatches, TargetIndex
from .reference_cache import TopKTargets


def prepare(batch: Batch, eos_id: int, cached: TopKTargets | None = None) -> Batch:
    """``batch`` (host tensors) with its target index and, given ``cached``, the cached targets of its general rows."""
    index = TargetIndex.of(batch, eos_id)
    topk = None
    if cached is not None and batch.general_rows is not None and len(index.general):
        topk = cached.lookup(batch.general_rows, batch.target_mask(eos_id)[index.general_rows])
    return dataclasses.replace(batch, index=index, topk=topk)


class _Ahead(threading.Thread):
    """One step built in the background; :meth:`result` waits for it (and raises what the build raised)."""

    def __init__(self, build: Callable[[], tuple[list[Batch], dict]]) -> None:
        super().__init__(name="mol-next-batch", daemon=True)
        self.build, self.value, self.error = build, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.build()
        except BaseException as err:  # handed to the training thread
            self.error = err

    def result(self) -> tuple[list[Batch], dict]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


class StepFeed:
    """Each optimizer step's ``micro`` batches, the next step's drawn and prepared in a background thread while the
    current step runs: host tensors, or with ``pin_for`` (a GPU) pinned and copied to it on the feed's own CUDA
    stream. The thread builds one step and ends; ``next_step`` starts the next one, so no thread outlives the step
    after the last one handed out, and ``close`` waits for that one."""

    def __init__(self, batches: MixedBatches, micro: int, prepare: Callable[[Batch], Batch],
                 pin_for: torch.device | None = None) -> None:
        self.batches, self.micro, self.prepare, self.pin_for = batches, micro, prepare, pin_for
        self.stream = torch.cuda.Stream(pin_for) if pin_for is not None else None
        self._handed = batches.state()
        self._ahead: _Ahead | None = None

    def _build(self) -> tuple[list[Batch], dict]:
        step = [self.prepare(self.batches.next_batch()) for _ in range(self.micro)]
        if self.pin_for is not None:  # for the GPU of this rank, as DataLoader's pinning thread does
            if self.pin_for.index is not None:
                torch.cuda.set_device(self.pin_for)
            with torch.cuda.stream(self.stream):  # the copies wait for nothing the running step enqueued
                step = [b.pin().to(self.pin_for) for b in step]
        return step, self.batches.state()

    def next_step(self, ahead: bool = True) -> list[Batch]:
        """The next step's micro-batches (on the GPU with ``pin_for``, else host tensors); with ``ahead`` the one
        after starts building (a last step has none after it)."""
        step, self._handed = (self._ahead or _Ahead(self._build)).result()
        if self.stream is not None:
            step = [self._on_current_stream(b) for b in step]
        self._ahead = _Ahead(self._build) if ahead else None
        return step

    def _on_current_stream(self, batch: Batch) -> Batch:
        """``batch``, copied on the feed's stream, made safe to use on the current one: that stream waits for the
        copies, and the caching allocator is told the tensors are used there (it must not hand their memory back
        to the feed's stream while the step still reads them)."""
        current = torch.cuda.current_stream(self.pin_for)
        current.wait_stream(self.stream)

        def used_here(t: torch.Tensor) -> torch.Tensor:
            t.record_stream(current)
            return t

        return batch.apply(used_here)

    def state(self) -> dict:
        """The stream position after the steps handed out (not those built ahead): where a resumed run goes on."""
        return dict(self._handed)

    def load_state(self, state: dict) -> None:
        """Go on from ``state`` (a checkpoint's): what was built ahead is dropped."""
        self.close()
        self.batches.load_state(state)
        self._handed = self.batches.state()

    def close(self) -> None:
        """Wait for the step being built and rewind the stream to the steps handed out."""
        if self._ahead is not None:
            self._ahead.join()
            self._ahead = None
        self.batches.load_state(self._handed)
