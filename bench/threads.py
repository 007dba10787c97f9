"""torch's default thread count against 1 (and the rule's choice) on a busy machine: the demo's pretraining step.

    .venv/bin/python bench/threads.py [--rounds 6] [--steps 4]

Interleaved in one process (round-robin, ``--steps`` steps per thread count per round, the first round discarded
as warm-up), so every count sees the same load; prints the load average before and after, the median seconds
per step of each count, and one JSON line. About a minute on 2 busy cores (a 2-thread step took 7 s there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mol_engine.demo import BATCH_SIZE, BLOCK_SIZE, VOCAB_SIZE, tiny_llama_config
from mol_engine.threads import compute_threads


def step_seconds(model, optimizer, batch: torch.Tensor, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    default = torch.get_num_threads()
    counts = sorted({default, 1, compute_threads()}, reverse=True)
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(VOCAB_SIZE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(VOCAB_SIZE, (BATCH_SIZE, BLOCK_SIZE))
    load_before = os.getloadavg()
    seen: dict[int, list[float]] = {n: [] for n in counts}
    for round_ in range(args.rounds):
        for n in counts:
            torch.set_num_threads(n)
            times = step_seconds(model, optimizer, batch, args.steps)
            if round_:
                seen[n] += times
    load_after = os.getloadavg()
    median = {n: statistics.median(t) for n, t in seen.items()}
    print(f"{os.cpu_count()} CPUs, load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"torch default {default} threads, rule's choice {compute_threads()}")
    for n in counts:
        print(f"  {n} thread(s): median {median[n]:.3f} s/step over {len(seen[n])} steps "
              f"({median[counts[-1]] / median[n]:.2f}x the speed of 1 thread)")
    print(json.dumps({"cpus": os.cpu_count(), "load_before": load_before[0], "load_after": load_after[0],
                      "default_threads": default, "s_per_step": {str(n): round(m, 4) for n, m in median.items()}}))


if __name__ == "__main__":
    main()
