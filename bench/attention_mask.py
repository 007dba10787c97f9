"""The attention mask of ``packing: document``, dense (SDPA) against block-sparse (FlexAttention), on the CPU
(issue 19, item 3), side by side in one run:

    .venv/bin/python bench/attention_mask.py [--seq 8192]

One row of ``seq`` tokens packs documents of 100 to 1,000 tokens (positions restart at each). transformers'
``create_causal_mask`` builds the mask the model's layers get: for ``sdpa`` a dense boolean [B, 1, T, T] tensor,
for ``flex_attention`` a ``BlockMask`` (per 128 x 128 block: which blocks are full, partial or skipped). Then one
attention (2 heads of 32) runs with each: the dense SDPA kernel, and FlexAttention compiled (the CPU template of
torch.compile; forward only, as the CPU has no FlexAttention backward), and their outputs are compared.

Prints one JSON line: ``dense_mask_bytes``, ``flex_mask_bytes``, ``mask_bytes_ratio`` (dense / flex),
``dense_mask_bytes_at_131072`` and ``flex_mask_bytes_at_131072`` (the same layout's size at the spec's longest
``seq_len``, computed, not built), the seconds to build each mask, FlexAttention's first call (its compilation)
and a later call against SDPA's, and ``max_abs_diff`` of the two outputs. Goal: ``mask_bytes_ratio`` ≥ 100.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from transformers import LlamaConfig
from transformers.masking_utils import create_causal_mask

BLOCK = 128  # FlexAttention's block size
HEADS, HEAD_DIM = 2, 32


def packed_positions(seq: int, seed: int = 0) -> torch.Tensor:
    """[1, seq] position ids restarting at each packed document (100 to 1,000 tokens each)."""
    generator = torch.Generator().manual_seed(seed)
    pieces, left = [], seq
    while left > 0:
        n = min(left, int(torch.randint(100, 1001, (1,), generator=generator)))
        pieces.append(torch.arange(n))
        left -= n
    return torch.cat(pieces)[None]


def build_mask(attention: str, positions: torch.Tensor) -> tuple[torch.Tensor | BlockMask, float]:
    """The mask transformers gives the layers of a model running ``attention`` on these positions, and the
    seconds it took to build."""
    config = LlamaConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS, num_hidden_layers=1)
    config._attn_implementation = attention
    embeds = torch.zeros(1, positions.shape[1], config.hidden_size)
    started = time.perf_counter()
    mask = create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=None, cache=None,
                              position_ids=positions)
    return mask, time.perf_counter() - started


def tensor_bytes(mask: torch.Tensor | BlockMask) -> int:
    """Bytes held by the mask's tensors; a BlockMask's mask function also reads two [B, T] int64 tensors (the
    position ids and each token's document index), counted here."""
    if not isinstance(mask, BlockMask):
        return mask.numel() * mask.element_size()
    tables = sum(t.numel() * t.element_size() for t in mask.as_tuple() if isinstance(t, torch.Tensor))
    return tables + 2 * 8 * mask.shape[0] * mask.seq_lengths[0]


def flex_bytes_at(seq: int, like: BlockMask, measured_seq: int) -> int:
    """A BlockMask's bytes at ``seq``: its [blocks, blocks] index tables grow with (seq / 128)², the rest
    with seq / 128 (scaled from the measured mask's layout)."""
    blocks, measured_blocks = -(-seq // BLOCK), -(-measured_seq // BLOCK)
    square = sum(t.numel() * t.element_size() for t in like.as_tuple()
                 if isinstance(t, torch.Tensor) and t.dim() == 4)
    linear = tensor_bytes(like) - square  # per-block counts and the [B, T] tensors: both grow with seq
    return round(square * (blocks / measured_blocks) ** 2 + linear * blocks / measured_blocks)


def timed(fn) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", type=int, default=8192)
    seq = parser.parse_args().seq
    positions = packed_positions(seq)
    dense, dense_build_s = build_mask("sdpa", positions)
    flex_mask, flex_build_s = build_mask("flex_attention", positions)  # includes compiling the mask builder
    q, k, v = (torch.randn(1, HEADS, seq, HEAD_DIM, generator=torch.Generator().manual_seed(i)) for i in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    want, sdpa_s = timed(lambda: sdpa(q, k, v, attn_mask=dense))
    compiled = torch.compile(flex_attention)
    got, flex_first_s = timed(lambda: compiled(q, k, v, block_mask=flex_mask))
    _, flex_s = timed(lambda: compiled(q, k, v, block_mask=flex_mask))
    dense_bytes, flex_bytes = tensor_bytes(dense), tensor_bytes(flex_mask)
    result = {
        "seq": seq, "documents": int((positions == 0).sum()),
        "dense_mask_bytes": dense_bytes, "flex_mask_bytes": flex_bytes,
        "mask_bytes_ratio": round(dense_bytes / flex_bytes, 1),
        "dense_mask_bytes_at_131072": 131_072**2 * dense.element_size(),
        "flex_mask_bytes_at_131072": flex_bytes_at(131_072, flex_mask, seq),
        "dense_mask_build_s": round(dense_build_s, 3), "flex_mask_build_s": round(flex_build_s, 3),
        "sdpa_attention_s": round(sdpa_s, 3), "flex_attention_first_call_s": round(flex_first_s, 2),
        "flex_attention_s": round(flex_s, 3), "max_abs_diff": float((want - got).abs().max()),
        "load": round(os.getloadavg()[0], 2),
    }
    result["goals_met"] = result["mask_bytes_ratio"] >= 100 and result["max_abs_diff"] < 1e-4
    print(json.dumps(result))


if __name__ == "__main__":
    main()
