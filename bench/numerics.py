"""The engine's numerics and memory at scale, on the CPU (issue 19, items 6, 7, 9 and 11), in under a minute:

    .venv/bin/python bench/numerics.py

- ``head_grad_relerr_ratio``: the head weight's gradient of a chunked CE + reverse-KL loss under bf16 autocast,
  its relative error against float64 with 256 chunks over that with one chunk (goal ≤ 1.5: the chunks' gradients
  are summed in float32, not in the bf16 cast of the weight).
- ``step0_kl_bf16``: ``eval/general_kl`` at step 0 of a full fine-tuning MoL run, ``precision: bf16`` (CPU
  autocast), on a tiny Llama whose weights are scaled so its next-token distributions are peaked as a trained
  model's (goal ≤ 1e-6: the frozen base computes as the trained fp32 masters do).
- ``forward_cached_grad_finite``: the forward KL against cached top-k targets has finite gradients, equal to a
  float64 reference, at extreme logits (a bucket the model gives e^-300) (goal: true).

- ``fsdp_rank_peak_rss_ratio``: setting up full fine-tuning MoL with the exact reference (model, frozen reference,
  data, AdamW: ``setup_run``, no step) on a random 127M-parameter Llama (hidden 1024, 10 layers, fp32) under FSDP in
  2 processes (torchrun, gloo), the largest rank's peak resident memory above its baseline (after the imports, the
  model's modeling code included), over one process's (goal <= 0.65: each rank loads only its shards).
  ``fsdp_setup_peak_rss_mib`` gives the figures. Measured as bench/fsdp_check.py measures (glibc's mmap
  threshold fixed at 1 MiB in both runs: see its ``MALLOC_ENV``). AdamW allocates its state at the first step,
  sharded alike before and after this change: not in the figure.

Prints one JSON line: the figures and ``goals_met``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mol_engine.callbacks import Callback
from mol_engine.losses import chunked_ce_split, chunked_kl_sum, token_topk_kl
from mol_engine.spec import JobSpec
from mol_engine.train import _evaluate, setup_run

GOALS = {"head_grad_relerr_ratio": lambda v: v <= 1.5, "step0_kl_bf16": lambda v: v <= 1e-6,
         "forward_cached_grad_finite": lambda v: v is True, "fsdp_rank_peak_rss_ratio": lambda v: v <= 0.65}
WORDS = "the river model light north stone garden window paper quiet music winter table letter city road".split()


def head_grad_relerr(chunks: int, positions: int = 4096, hidden: int = 64, vocab: int = 1024) -> float:
    """Relative error (Frobenius) of the head weight's gradient of Σ CE + Σ reverse KL, computed in ``chunks``
    chunks under CPU bf16 autocast, against the same loss in float64."""
    g = torch.Generator().manual_seed(0)
    head, ref_head = (torch.nn.Linear(hidden, vocab, bias=False) for _ in range(2))
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) / hidden**0.5)
        ref_head.weight.copy_(head.weight + 0.3 * torch.randn(vocab, hidden, generator=g) / hidden**0.5)
    h = torch.randn(positions, hidden, generator=g)
    targets = torch.randint(0, vocab, (positions,), generator=g)
    chunk = -(-positions // chunks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total = (chunked_ce_split(h, head, targets, None, chunk)[0]
                 + chunked_kl_sum(h, head, h, ref_head, "reverse", chunk))
    total.backward()
    w = head.weight.detach().double().requires_grad_()
    log_p = (h.double() @ w.T).log_softmax(-1)
    log_q = (h.double() @ ref_head.weight.double().T).log_softmax(-1)
    exact = -log_p.gather(-1, targets[:, None]).sum() + (log_p.exp() * (log_p - log_q)).sum()
    (grad,) = torch.autograd.grad(exact, w)
    return ((head.weight.grad.double() - grad).norm() / grad.norm()).item()


def forward_cached_grad_finite() -> bool:
    """Whether the cached forward KL's gradient at extreme logits is finite and matches float64 (rtol 1e-4)."""
    torch.manual_seed(5)
    log_q = (torch.randn(3, 30) * 2).log_softmax(-1)
    values, index = log_q.topk(4, -1)
    tail = log_q.scatter(-1, index, float("-inf")).logsumexp(-1)
    logits = torch.randn(3, 30)
    logits[0, next(v for v in range(30) if v not in index[0])] = 300.0  # the top-k at e^-300
    logits[1] = -300.0
    logits[1, index[1]] = 0.0  # the tail at e^-300
    z = logits.clone().requires_grad_()
    token_topk_kl(z, index, values, tail, "forward").sum().backward()
    z64 = logits.double().requires_grad_()
    log_p = z64.log_softmax(-1)
    log_b = torch.cat([log_p.gather(-1, index), log_p.scatter(-1, index, float("-inf")).logsumexp(-1)[:, None]], -1)
    log_t = torch.cat([values, tail[:, None]], -1).double()
    (log_t.exp() * (log_t - log_b)).sum().backward()
    return bool(torch.isfinite(z.grad).all()) and torch.allclose(z.grad, z64.grad.float(), rtol=1e-4, atol=1e-6)


def sharp_model(root: Path) -> tuple[Path, dict[str, str]]:
    """A tiny Llama (weights scaled by 10: peaked distributions) with a small BPE tokenizer, and two corpora."""
    from transformers import LlamaForCausalLM

    from mol_engine.demo import build_tokenizer, tiny_llama_config

    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) + "." for _ in range(120)]
    tokenizer = build_tokenizer(docs, vocab_size=320)
    config = tiny_llama_config(len(tokenizer), hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                               max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.mul_(10.0)
    model.save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    data = {}
    for name, part in (("domain", docs[:60]), ("general", docs[60:])):
        data[name] = str(root / f"{name}.jsonl")
        Path(data[name]).write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    return root / "model", data


def step0_kl_bf16(root: Path) -> float:
    """``eval/general_kl`` at step 0 of full fine-tuning MoL with the exact reference, bf16 autocast on the CPU."""
    model, data = sharp_model(root)
    spec = JobSpec(name="numerics", base_model=str(model), domain_data=[data["domain"]],
                   general_data=[data["general"]], method="mol", finetune="full", precision="bf16", device="cpu",
                   seq_len=32, batch_size=4, eval_batches=4, max_steps=1, sample_prompts=[], seed=0)
    run = setup_run(spec, root / "run")
    return _evaluate(run, 0, Callback())["eval/general_kl"]


def fsdp_setup_rss(root: Path) -> dict[str, float | list[float]]:
    """Peak resident MiB of setting up a 127M-parameter full fine-tuning run in 1 process and in each of 2 FSDP
    ranks (bench/fsdp_check.py's ``setup_rss``; a one-step tiny curve follows in the same processes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fsdp_check import run_curve, tiny_setup, wide_model

    model, files = tiny_setup(root)
    spec = JobSpec(base_model=str(model), domain_data=[str(files["domain"])], general_data=[str(files["general"])],
                   seq_len=32, batch_size=4, max_steps=1, precision="fp32", device="cpu", eval_every=10_000,
                   save_every=10_000, distributed="fsdp", sample_prompts=[])
    wide = spec.model_copy(update={"base_model": str(wide_model(root, model, 1024, 10))})
    single = run_curve(spec, root / "one", 1, rss_spec=wide)
    sharded = run_curve(spec.model_copy(update={"batch_size": 2}), root / "two", 2, rss_spec=wide)
    return {"single": single[0]["rss"]["setup_peak_rss_mib"],
            "ranks": [r["rss"]["setup_peak_rss_mib"] for r in sharded]}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mol-numerics-") as tmp:
        figures = {"head_grad_relerr_ratio": head_grad_relerr(256) / head_grad_relerr(1),
                   "step0_kl_bf16": step0_kl_bf16(Path(tmp)),
                   "forward_cached_grad_finite": forward_cached_grad_finite()}
        rss = fsdp_setup_rss(Path(tmp) / "fsdp")
        figures["fsdp_rank_peak_rss_ratio"] = max(rss["ranks"]) / rss["single"]
        figures["fsdp_setup_peak_rss_mib"] = rss
    figures["goals_met"] = {key: GOALS[key](value) for key, value in figures.items() if key in GOALS}
    print(json.dumps(figures))
    return 0 if all(figures["goals_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
