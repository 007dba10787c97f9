"""A pre-flight estimate of what a job spec asks of a device: peak memory per process, seconds per step, seconds for
the whole job, from the base model's ``config.json`` (no weights loaded) and a model of the engine's step.

Memory per process, in bytes, as the engine holds it (``mol_engine/train.py``, ``reference.py``, ``losses.py``):

- **parameters**: full fine-tuning keeps fp32 master weights on every device (autocast computes in bf16 on CUDA);
  LoRA keeps the frozen base in the compute dtype (bf16 on CUDA, fp32 on a CPU, ``modeling.pick_dtype``) and its
  adapters, r·(in+out) per adapted linear, in fp32.
- **gradients**: fp32, of the trainable parameters only (all of them, or the adapters).
- **optimizer**: AdamW's two fp32 moments per trainable parameter (``train._optimizer``); on a CPU its foreach
  update also holds about one more fp32 copy of them while it runs (CUDA's fused kernel none).
- **reference**: the frozen copy of the base that MoL with ``reference: exact`` and full fine-tuning keeps
  (fp32 on a CPU; on CUDA bf16 matmul weights beside fp32 embeddings and norms; bf16 under FSDP); none with LoRA
  (the adapters are disabled instead), with ``reference: cached`` (its top-k targets, a batch at a time) or for
  ``cpt`` / ``domain_only`` (the base is loaded only to evaluate, when nothing is being trained).
- **activations**: per token and decoder layer, k x (4·hidden + 2·q_dim + 2·kv_dim + 4·intermediate) elements of
  ``ACTIVATION_BYTES``: what a Llama layer keeps for its backward pass (the two norms' inputs and outputs, the
  rotated q and k, v, the attention output; the MLP's gate and up outputs, the gate's activation and the product),
  with SDPA's fused kernels keeping no [T, T] scores; k is fitted to measured peaks (``bench/estimate_check.py``),
  for the micro-batch's batch_size x seq_len tokens; with gradient checkpointing each layer keeps its fp32 input
  alone, and one layer's activations live again while it is recomputed in the backward pass.
- **loss chunk**: the logits of ``loss_chunk_tokens`` positions over the vocabulary: a CE chunk's logits and fp32
  gradient buffer, twice that for a KL chunk (``losses.chunk_size`` sizes chunks by the device when unset), and
  the [tokens, hidden] gradient of the hidden states the chunked loss forms in forward; the exact reference's
  hidden states for the general rows.
- **FSDP** (``nproc`` > 1, full fine-tuning or ``distributed: fsdp``): parameters, gradients, optimizer state and
  the reference are sharded (divided by nproc), plus the unsharded layers being gathered and the root group
  (embeddings, head) that stays gathered through the step; **DDP**: nothing divided, and its gradient buckets
  hold a second copy of the trainable gradients.

The peak is the largest of three moments of a step: the end of the forward pass (every activation, the head's
gradient, a loss chunk), the end of the backward pass (every gradient, one layer's activations) and the optimizer
update. Every figure is per process: each process of an nproc job holds its own.

Time: FLOPs per step (6 x matmul parameters per trained token, 4 x for LoRA which forms no base weight gradient,
+2 x for the recompute of checkpointing, +2 x per general token for the exact reference's forward, + attention's
12·layers·hidden·seq_len) divided by the device's achieved FLOP/s (:data:`DEVICES`: measured on a CPU here; a GPU's
is its bf16 peak times an MFU, say which). The whole job adds its evaluations (forward passes over the held-out
blocks, generated samples) and its saves (bytes written at an assumed disk rate); the setup (loading, tokenizing,
caching the reference) is not modelled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .spec import JobSpec

GiB = 2**30
# fitted by bench/estimate_check.py on this machine's CPU (fp32): the multiplier of the activation elements a layer
# is counted to keep (see the top), and a constant (bytes) a run holds beside the modelled tensors (the corpora's
# token maps, the batch built ahead, allocator slack)
ACTIVATION_SCALE = 1.17
OVERHEAD_BYTES = 40 * 2**20
# bytes of one saved activation element: fp32 on a CPU; on CUDA under bf16 autocast a mix (matmul inputs and
# outputs in bf16, the fp32 residual stream and norms): fitted to the one GPU peak measured (an H200, code of
# 2026-11-29: bench/estimate_check.py --gpu-point), not to the code of now
ACTIVATION_BYTES = {"cpu": 4.0, "cuda": 2.36}
CPU_CHUNK_BYTES, CPU_CHUNK_POSITIONS, CUDA_CHUNK_BYTES = 64 * 2**20, 512, 2**30  # as losses.chunk_size
SAVE_BYTES_PER_S = 1e9  # assumed checkpoint write rate
DECODE_STEP_S = {"cpu": 0.0, "cuda": 1e-4}  # assumed floor per generated token and layer (kernel launches)
SAMPLE_PROMPTS_DEFAULT = 4  # sample_prompts null: 2 QA questions and 2 held-out prefixes


@dataclass(frozen=True)
class DeviceKind:
    """A device the estimate knows: its kind (cpu or cuda), memory per device (None: the host's, unknown here),
    the FLOP/s the engine achieves on it and where that figure comes from."""

    name: str
    kind: str
    memory_bytes: int | None
    flops: float
    source: str


GPU_MFU = 0.11  # measured: CPT on an H200 at 0.5B, seq 2048 (docs/performance.md, code of 2026-11-29)
CPU_FLOPS = 85.7e9  # fitted: 14 shapes' steps on this machine's 2 cores, fp32, quiet (docs/performance.md)
# seconds a step costs beside its FLOPs (the host's work, the Python of 50-odd modules): measured on the CPU (the
# tiny model's step), assumed none on a GPU, where the host prepares the next step while this one runs
STEP_OVERHEAD_S = {"cpu": 0.0133, "cuda": 0.0}
# the share of the FLOP rate a LoRA step achieves: PEFT's adapters add two thin matmuls and a few elementwise ops per
# linear, which a CPU runs below its rate (fitted: 0.73 of full fine-tuning's FLOP/s); assumed 1 on a GPU
LORA_RATE = {"cpu": 0.73, "cuda": 1.0}
_GPU = {  # name -> (dense bf16 peak FLOP/s, memory bytes), vendor datasheets (as bench/gpu_check.py's PEAK_BF16)
    "H200": (989e12, 141 * 10**9), "H100 PCIe": (756e12, 80 * 10**9), "H100": (989e12, 80 * 10**9),
    "GH200": (989e12, 96 * 10**9), "B200": (2250e12, 180 * 10**9), "A100": (312e12, 80 * 10**9),
    "L40S": (362e12, 48 * 10**9), "L4": (121e12, 24 * 10**9), "A10G": (70e12, 24 * 10**9),
    "A10": (125e12, 24 * 10**9), "RTX 4090": (165e12, 24 * 10**9),
}
DEVICES: dict[str, DeviceKind] = {
    "cpu": DeviceKind("cpu", "cpu", None, CPU_FLOPS, "measured: bench/estimate_check.py on a 2-core CPU"),
    **{name: DeviceKind(name, "cuda", memory, peak * GPU_MFU,
                        f"assumed: {peak / 1e12:g} TFLOP/s bf16 peak x {GPU_MFU:.0%} MFU (measured on an H200)")
       for name, (peak, memory) in _GPU.items()},
    # a GPU whose name the table lacks (a worker's ``cuda (GPUs 0)``): an A100's rate assumed, its memory the worker's
    "cuda": DeviceKind("cuda", "cuda", None, 312e12 * GPU_MFU, f"assumed: an unnamed GPU taken as an A100 (312 "
                       f"TFLOP/s x {GPU_MFU:.0%} MFU)"),
}
# the demo base (mol_engine/demo: tiny_llama_config's defaults, a 2048-word tokenizer) before it is built
DEMO_SHAPE_CONFIG = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 352,
                     "vocab_size": 2048, "tie_word_embeddings": True}


class EstimateError(ValueError):
    """The estimate cannot be made (no readable config.json, an unknown device); the message names the field."""


def device_kind(name: str) -> DeviceKind | None:
    """The :data:`DEVICES` entry ``name`` is or contains (``cpu``, ``cpu (8 cores)``, ``NVIDIA H100 80GB HBM3``,
    ``cuda: 2 x NVIDIA H200 (GPUs 0,1)``): the longest key it contains, GPU names before ``cpu``; None if none."""
    text = name.strip().lower()
    gpus = sorted((k for k in _GPU if k.lower() in text), key=len, reverse=True)
    if gpus:
        return DEVICES[gpus[0]]
    if text.startswith("cpu"):
        return DEVICES["cpu"]
    return DEVICES["cuda"] if text.startswith("cuda") else None


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder-only model, read from its config.json."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @property
    def layer_matmul(self) -> int:
        """Weights of one decoder layer's linears (q, k, v, o, gate, up, down)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (q + 2 * kv) + q * self.hidden + 3 * self.hidden * self.intermediate

    @property
    def layer_params(self) -> int:
        """One decoder layer's parameters: its linears, biases and two norms."""
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return self.layer_matmul + bias + 2 * self.hidden

    @property
    def embedding(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All parameters: embeddings, layers, final norm and (untied) head."""
        return self.embedding * (1 if self.tied else 2) + self.layers * self.layer_params + self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters every token multiplies through: the layers' linears and the head."""
        return self.layers * self.layer_matmul + self.embedding

    def lora_params(self, rank: int, targets: list[str] | str) -> int:
        """Adapter parameters, r·(in+out) per adapted linear of each layer (``all-linear``: the seven; else the
        named ones among them)."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
                  "up_proj": (h, i), "down_proj": (i, h)}
        chosen = shapes.values() if targets == "all-linear" else [shapes[t] for t in targets if t in shapes]
        return self.layers * sum(rank * (a + b) for a, b in chosen)


def model_shape(config: dict[str, Any]) -> ModelShape:
    """The :class:`ModelShape` of a Hugging Face config (a dict of its config.json)."""
    config = config.get("text_config", config)
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return ModelShape(
            layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(config.get("intermediate_size") or 4 * hidden), vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        raise EstimateError(f"base_model: config.json lacks what the estimate needs ({err!r})") from None


def read_model_shape(model_dir: str | Path) -> ModelShape:
    """:func:`model_shape` of ``model_dir/config.json``; :class:`EstimateError` naming base_model when unreadable."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise EstimateError(f"base_model: cannot read {model_dir}/config.json: {err}") from None
    if not isinstance(config, dict):
        raise EstimateError(f"base_model: {model_dir}/config.json is not a JSON object")
    return model_shape(config)


@dataclass(frozen=True)
class Estimate:
    """Peak bytes per process with its parts (those of the moment the peak is reached), seconds per optimizer
    step and for the job (steps, evaluations, saves; setup not included)."""

    peak_bytes: int
    parts: dict[str, int]
    phase: str  # forward, backward or optimizer: the moment of the step the peak is reached
    step_s: float
    eval_s: float
    save_s: float
    job_s: float
    flops_per_step: float
    device: str
    dtype: str
    sharding: str  # none, fsdp or ddp

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def uses_fsdp(spec: JobSpec) -> bool:
    """As ``distributed.uses_fsdp``: several processes, and fsdp asked or auto with full fine-tuning."""
    return spec.nproc > 1 and (spec.distributed == "fsdp" or (spec.distributed == "auto" and spec.finetune == "full"))


def layer_elements(shape: ModelShape) -> int:
    """Elements per token one decoder layer keeps for backward (before ``ACTIVATION_SCALE``): each norm's input and
    output, the rotated q and k, v, the attention output (SDPA's kernels keep no [T, T] scores); the MLP's gate and
    up outputs, the gate's activation and their product."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return 4 * shape.hidden + 2 * q + 2 * kv + 4 * shape.intermediate


def chunk_positions(spec: JobSpec, vocab: int, device: DeviceKind) -> int:
    """Positions per loss chunk, as ``losses.chunk_size`` picks them on ``device``."""
    if spec.loss_chunk_tokens:
        return spec.loss_chunk_tokens
    if device.kind == "cuda":
        limit = min(CUDA_CHUNK_BYTES, (device.memory_bytes or 80 * 10**9) // 64)
        return max(1, limit // (4 * vocab))
    return min(max(1, CPU_CHUNK_BYTES // (4 * vocab)), CPU_CHUNK_POSITIONS)


def memory_parts(spec: JobSpec, shape: ModelShape, device: DeviceKind,
                 coefficients: tuple[float, float] | None = None) -> tuple[dict[str, int], str]:
    """(the parts of the peak bytes per process, the phase it is reached in) of ``spec`` on ``device``.
    ``coefficients`` (activation scale, overhead bytes) replace the fitted ones (the bench fits them with it)."""
    scale, overhead = coefficients or (ACTIVATION_SCALE, OVERHEAD_BYTES)
    cuda, lora = device.kind == "cuda", spec.finetune == "lora"
    compute = 2 if (cuda and spec.precision != "fp32") or spec.precision == "bf16" else 4
    fsdp = uses_fsdp(spec)
    shards = spec.nproc if fsdp else 1
    adapters = shape.lora_params(spec.lora.rank, spec.lora.target_modules) if lora else 0
    trainable = adapters if lora else shape.params
    weights = shape.params * compute + 4 * adapters if lora else 4 * shape.params / shards
    grads = 4 * trainable / shards
    optimizer = 8 * trainable / shards
    optimizer_temp = 0 if cuda else 4 * trainable / shards  # foreach AdamW's temporaries (fused on CUDA: none)
    kl = spec.method == "mol"
    n_general = spec.rows_per_batch()[1]
    reference = 0.0
    if kl and spec.reference == "exact" and not lora:
        embed_norms = shape.embedding + shape.layers * 2 * shape.hidden + shape.hidden
        if fsdp and cuda:
            reference = 2 * shape.params / shards
        elif cuda and compute == 2:  # bf16 matmul weights, fp32 embeddings and norms (reference.py)
            reference = 2 * (shape.params - embed_norms) + 4 * embed_norms
        else:
            reference = 4 * shape.params / shards
    if fsdp:  # the root group (embeddings, head) stays gathered; two layers gathered at a time
        gather = 2 if cuda else 4
        weights += gather * (shape.embedding * (1 if shape.tied else 2) + 2 * shape.layer_params)
    tokens = spec.batch_size * spec.seq_len
    element = ACTIVATION_BYTES[device.kind] if compute == 2 else 4.0
    per_layer = tokens * scale * layer_elements(shape) * element
    inputs = tokens * shape.layers * shape.hidden * 4 if spec.gradient_checkpointing else 0  # fp32 layer inputs
    forward_activations = inputs or shape.layers * per_layer
    chunk = chunk_positions(spec, shape.vocab, device)
    exact_kl = kl and spec.reference == "exact"
    # a chunk's logits (compute dtype) and its fp32 gradient buffer; a KL chunk (exact or cached) holds as many again:
    # the reference's logits and fp32 log-probabilities, or the bucket sums' [chunk, vocab] temporaries
    chunk_bytes = min(chunk, tokens) * shape.vocab * ((compute + 4) * (2 if kl else 1))
    hidden_grad = tokens * shape.hidden * 4
    head_grad = 0 if lora else 4 * shape.embedding / shards
    ref_hidden = n_general * spec.seq_len * shape.hidden * compute if exact_kl else 0
    cached_batch = n_general * spec.seq_len * (spec.reference_top_k * 8 + 4) if kl and spec.reference == "cached" else 0
    ddp_buckets = 4 * trainable if spec.nproc > 1 and not fsdp else 0
    held = {"parameters": weights, "optimizer": optimizer, "reference": reference, "overhead": overhead + ddp_buckets}
    earlier_grads = grads if spec.grad_accum > 1 else head_grad
    phases = {
        "forward": {**held, "gradients": earlier_grads, "activations": forward_activations,
                    "loss_chunk": chunk_bytes + hidden_grad + ref_hidden + cached_batch},
        "backward": {**held, "gradients": grads, "activations": per_layer + inputs + hidden_grad, "loss_chunk": 0},
        "optimizer": {**held, "gradients": grads + optimizer_temp, "activations": 0, "loss_chunk": 0},
    }
    phase = max(phases, key=lambda p: sum(phases[p].values()))
    return {k: int(v) for k, v in phases[phase].items()}, phase


def step_flops(spec: JobSpec, shape: ModelShape) -> float:
    """FLOPs one process spends on one optimizer step (all its micro-batches)."""
    tokens = spec.batch_size * spec.seq_len
    n_general = spec.rows_per_batch()[1]
    matmul, body = shape.matmul_params, shape.layers * shape.layer_matmul
    attention = 12 * shape.layers * shape.hidden * spec.seq_len  # forward + backward, per token
    lora = spec.finetune == "lora"
    adapters = shape.lora_params(spec.lora.rank, spec.lora.target_modules) if lora else 0
    per_token = (4 * matmul + 6 * adapters if lora else 6 * matmul) + attention
    if spec.gradient_checkpointing:
        per_token += 2 * body + attention / 3
    flops = tokens * per_token
    if spec.method == "mol" and spec.reference == "exact":
        flops += n_general * spec.seq_len * (2 * matmul + attention / 3)
    return flops * spec.grad_accum


def eval_seconds(spec: JobSpec, shape: ModelShape, device: DeviceKind) -> float:
    """One evaluation: forward passes over eval_batches x batch_size held-out blocks of each corpus (the base's
    too on the general ones, twice with the drift report), and the sample completions (QA not counted: its set's
    size is not known here)."""
    blocks = spec.eval_batches * spec.batch_size * spec.seq_len
    forward = 2 * shape.matmul_params + 4 * shape.layers * shape.hidden * spec.seq_len
    general = 1 if spec.uses_general else 0
    passes = 1 + general * (1 + (4 if spec.method != "domain_only" else 0))
    prompts = len(spec.sample_prompts) if isinstance(spec.sample_prompts, list) else SAMPLE_PROMPTS_DEFAULT
    generated = prompts * spec.sample_max_tokens
    decode = generated * max(2 * shape.matmul_params / device.flops, shape.layers * DECODE_STEP_S[device.kind])
    return passes * blocks * forward / device.flops + decode


def checkpoint_bytes(spec: JobSpec, shape: ModelShape) -> int:
    """What one save writes: the trained weights (fp32; the adapters alone with LoRA) and AdamW's state."""
    trainable = shape.lora_params(spec.lora.rank, spec.lora.target_modules) if spec.finetune == "lora" \
        else shape.params
    return 12 * trainable


def evaluations(max_steps: int, eval_every: int) -> int:
    """Evaluations a run makes: step 0, every ``eval_every`` and the last step."""
    return 1 + max_steps // eval_every + (max_steps % eval_every != 0)


def saves(max_steps: int, save_every: int) -> int:
    """Checkpoints a run writes: every ``save_every`` and the last step."""
    return max_steps // save_every + (max_steps % save_every != 0)


def estimate(spec: JobSpec, shape: ModelShape, device: DeviceKind) -> Estimate:
    """The pre-flight :class:`Estimate` of ``spec`` (its base model of ``shape``) on ``device``; a spec that says
    ``device: cpu`` is estimated on a CPU whatever the worker has."""
    if spec.device.strip() == "cpu" and device.kind != "cpu":
        device = DEVICES["cpu"]
    parts, phase = memory_parts(spec, shape, device)
    flops = step_flops(spec, shape)
    rate = device.flops * (LORA_RATE[device.kind] if spec.finetune == "lora" else 1.0)
    step_s = flops / rate + STEP_OVERHEAD_S[device.kind] * spec.grad_accum
    eval_s = eval_seconds(spec, shape, device)
    save_s = checkpoint_bytes(spec, shape) / SAVE_BYTES_PER_S
    job_s = spec.max_steps * step_s + evaluations(spec.max_steps, spec.eval_every) * eval_s \
        + saves(spec.max_steps, spec.save_every) * save_s
    compute = "bf16" if (device.kind == "cuda" and spec.precision != "fp32") or spec.precision == "bf16" else "fp32"
    sharding = "fsdp" if uses_fsdp(spec) else "ddp" if spec.nproc > 1 else "none"
    return Estimate(sum(parts.values()), parts, phase, step_s, eval_s, save_s, job_s, flops, device.name, compute,
                    sharding)


def fits(peak_bytes: int, memory_bytes: int, margin: float, device: DeviceKind, nproc: int) -> bool:
    """Whether ``nproc`` processes of ``peak_bytes`` each fit a worker of ``memory_bytes`` per device, leaving
    ``margin`` (a fraction) free: a GPU per process; a CPU worker's processes share its memory."""
    per_process = memory_bytes / (nproc if device.kind == "cpu" else 1)
    return peak_bytes <= per_process * (1 - margin)


def format_bytes(n: float) -> str:
    """``12.3 GiB``, ``512 MiB``."""
    return f"{n / GiB:.3g} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"
