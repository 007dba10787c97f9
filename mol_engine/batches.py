"""Token blocks in, mixed micro-batches out: draw domain:general rows per step, sharded across ranks.

Reading corpus files lives in :mod:`mol_engine.data` (files -> documents), tokenizing and packing in
:mod:`mol_engine.token_store` and :mod:`mol_engine.corpus` (documents -> blocks, read lazily); this module
mixes blocks into batches and says where a batch's targets are (:class:`TargetIndex`, found on the host), and
:mod:`mol_engine.prefetch` builds the next step's batches while a step runs.

Every row of a batch carries its flag (``is_general``, the paper's "add-info"), which routes it to the
cross-entropy or the KL term. Positions are resumable: the batch stream is a pure function of the seed and
two counters, so a checkpoint stores the counters and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

# ---------------------------------------------------------------- blocks


@dataclass
class Blocks:
    """Token blocks in memory: ``input_ids`` and ``attention_mask`` [n_blocks, seq_len]; with document packing,
    ``position_ids`` restart at every document so that no position attends across documents."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: Tensor | Sequence[int]) -> Blocks:
        index = torch.as_tensor(index, dtype=torch.long)
        positions = self.position_ids[index] if self.position_ids is not None else None
        return Blocks(self.input_ids[index], self.attention_mask[index], positions)


def document_positions(input_ids: Tensor, eos_id: int) -> Tensor:
    """[B, T] position ids that restart at 0 after every EOS (each document ends with one) and at each row."""
    length = input_ids.shape[1]
    arange = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[:, 1:] = input_ids[:, :-1] == eos_id
    start_of = torch.where(starts, arange, torch.zeros_like(arange)).cummax(dim=1).values
    return arange - start_of


# ---------------------------------------------------------------- batches


class BlockSource(Protocol):
    """Blocks that can be counted and read by index: :class:`Blocks` in memory, or windows into a token store."""

    def __len__(self) -> int: ...

    def select(self, index: Tensor | Sequence[int]) -> Blocks: ...


@dataclass
class TargetIndex:
    """Where a batch's valid targets are (:meth:`Batch.target_mask`), found on the host before the batch moves, so
    that the device gathers them with index tensors of known sizes and no count is read back from the device.

    Positions are flat indices into the batch's [B*T] positions, ``b*T + t`` for the hidden state at t that predicts
    token t+1, in row-major order; ``general_local`` indexes the same positions as ``general`` within the general
    rows alone [G*T] (where the reference's hidden states are).
    """

    domain: Tensor  # [n_domain] int32
    general: Tensor  # [n_general] int32
    general_rows: Tensor  # [G] int32: which rows of the batch are general
    general_local: Tensor  # [n_general] int32
    tokens: int  # the batch's real (unpadded) tokens

    @classmethod
    def of(cls, batch: Batch, eos_id: int) -> TargetIndex:
        """The index of ``batch`` (``nonzero`` and the token count read its tensors: build it on the host)."""
        valid, is_general = batch.target_mask(eos_id), batch.is_general
        length = valid.shape[1] + 1
        rows = is_general.nonzero()[:, 0]

        def flat(mask: Tensor) -> Tensor:
            found = mask.nonzero()
            return (found[:, 0] * length + found[:, 1]).int()

        return cls(flat(valid & ~is_general[:, None]), flat(valid & is_general[:, None]), rows.int(),
                   flat(valid[rows]), int(batch.attention_mask.sum()))

    def apply(self, fn: Callable[[Tensor], Tensor]) -> TargetIndex:
        return TargetIndex(fn(self.domain), fn(self.general), fn(self.general_rows), fn(self.general_local),
                           self.tokens)


TopK = tuple[Tensor, Tensor, Tensor]  # cached reference targets: token index [n, k], log q [n, k], log q_tail [n]


@dataclass
class Batch:
    """One micro-batch. ``is_general[i]`` says which loss row i feeds; targets are ``input_ids[:, 1:]``.

    ``index`` (where the targets are) and ``topk`` (the base's cached targets at the general ones) are built on the
    host with the batch (:func:`mol_engine.prefetch.prepare`) and move with it; without them the losses find them.
    """

    input_ids: Tensor  # [B, T]
    attention_mask: Tensor  # [B, T]
    is_general: Tensor  # [B] bool
    general_rows: Tensor | None = None  # [G] the general corpus block of each general row (for cached targets)
    position_ids: Tensor | None = None  # [B, T] with document packing (the model then takes no attention_mask)
    index: TargetIndex | None = None
    topk: TopK | None = None

    def apply(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        """This batch with ``fn`` applied to its tensors, but ``general_rows`` (corpus block ids, read on the host)."""
        def maybe(t: Tensor | None) -> Tensor | None:
            return fn(t) if t is not None else None

        return Batch(fn(self.input_ids), fn(self.attention_mask), fn(self.is_general), self.general_rows,
                     maybe(self.position_ids), self.index.apply(fn) if self.index is not None else None,
                     tuple(fn(t) for t in self.topk) if self.topk is not None else None)

    def to(self, device: torch.device) -> Batch:
        """On ``device``, copied without waiting (from pinned memory, the copies overlap the device's work)."""
        return self.apply(lambda t: t.to(device, non_blocking=True))

    def pin(self) -> Batch:
        """In page-locked host memory, so that :meth:`to` a GPU is an asynchronous copy."""
        return self.apply(Tensor.pin_memory)

    def target_mask(self, eos_id: int) -> Tensor:
        """[B, T-1] bool: the target at t+1 is a real token and not the first token of a new document."""
        return self.attention_mask[:, 1:] & (self.input_ids[:, :-1] != eos_id)

    def target_index(self, eos_id: int) -> TargetIndex:
        """``index``, or found now (from device tensors that is a read of the device: build it on the host)."""
        if self.index is not None:
            return self.index
        return TargetIndex.of(self, eos_id)


class RowStream:
    """Endless, seeded stream of block indices: a fresh permutation every epoch, resumable by position."""

    def __init__(self, n_blocks: int, seed: int) -> None:
        self.n_blocks, self.seed, self.position = n_blocks, seed, 0
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def take(self, count: int) -> list[int]:
        """The next ``count`` block indices."""
        out = []
        for _ in range(count):
            epoch, offset = divmod(self.position, self.n_blocks)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.n_blocks, generator=generator)
            out.append(int(self._perm[offset]))
            self.position += 1
        return out


class MixedBatches:
    """Micro-batches of ``n_domain`` domain rows then ``n_general`` general rows, sharded across ranks."""

    def __init__(self, domain: BlockSource, general: BlockSource | None, n_domain: int, n_general: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if n_general and general is None:
            raise ValueError("n_general > 0 needs general blocks")
        self.domain, self.general = domain, general
        self.n_domain, self.n_general = n_domain, n_general
        self.rank, self.world_size = rank, world_size
        self.domain_stream = RowStream(len(domain), seed)
        self.general_stream = RowStream(len(general), seed + 1) if general is not None else None

    def next_batch(self) -> Batch:
        """The next micro-batch of this rank (all ranks advance the streams by the global batch)."""
        domain_rows = self._take(self.domain_stream, self.n_domain)
        parts = [self.domain.select(domain_rows)]
        general_rows = None
        if self.n_general:
            general_rows = torch.tensor(self._take(self.general_stream, self.n_general), dtype=torch.long)
            parts.append(self.general.select(general_rows))
        flags = torch.cat([torch.zeros(self.n_domain, dtype=torch.bool), torch.ones(self.n_general, dtype=torch.bool)])
        positions = torch.cat([p.position_ids for p in parts]) if parts[0].position_ids is not None else None
        return Batch(torch.cat([p.input_ids for p in parts]), torch.cat([p.attention_mask for p in parts]), flags,
                     general_rows, positions)

    def _take(self, stream: RowStream, per_rank: int) -> list[int]:
        rows = stream.take(per_rank * self.world_size)
        return rows[self.rank * per_rank : (self.rank + 1) * per_rank]

    def state(self) -> dict:
        """The stream position, enough to resume exactly here."""
        return {"domain": self.domain_stream.position,
                "general": self.general_stream.position if self.general_stream else 0}

    def load_state(self, state: dict) -> None:
        self.domain_stream.position = int(state["domain"])
        if self.general_stream:
            self.general_stream.position = int(state["general"])
