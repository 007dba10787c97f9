"""The training loop: one function, :func:`train`, reading top to bottom.

setup (model, reference, data, optimizer, resume) -> [step: micro-batches -> losses -> backward -> clip ->
optimizer -> metrics -> eval -> checkpoint -> stop?] -> final checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .batches import Batch, MixedBatches
from .budget import best_checkpoint, budget_message, first_crossing, task_drops, write_best
from .callbacks import Callback, CallbackList, Cancelled
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_sharded_checkpoint
from .context import model_context, seq_len_problem
from .corpus import Corpus, split_corpus
from .data import DataError, read_qa
from .distributed import (
    World,
    compute_weights_dtype,
    gathered,
    is_sharded,
    join_world,
    load_for_fsdp,
    load_frozen_for_fsdp,
    local_device,
    main_rank_first,
    uses_fsdp,
    wrap,
)
from .drift import PassageKL, drift_event, passage_kls
from .evaluate import heldout_metrics, qa_exact_match
from .kl_controller import KLController
from .losses import chunk_size
from .model_card import build_card
from .modeling import (
    ModelError,
    add_lora,
    attention_of,
    compile_layers,
    count_parameters,
    for_generation,
    load_model,
    load_tokenizer,
    pick_attention,
    pick_device,
    pick_dtype,
    use_compile,
)
from .objective import ROUTES, objective
from .prefetch import StepFeed, prepare
from .reference import Reference, make_reference, released_after
from .reference_cache import TopKTargets, cache_key, load_or_build
from .run_dir import RunDir, step_name, step_of
from .samples import Sample, complete, job_prompts, samples_event
from .self_sample import self_corpus_path, self_general_corpus
from .spec import JobSpec
from .task_eval import load_tasks, task_scores
from .task_names import task_entry
from .threads import use_threads
from .token_store import TokenStore, cache_root, open_or_build
from .trackers import check_trackers, close_trackers, make_trackers

BUILD_TOKENS = 16_384  # tokens per reference forward when caching its top-k (no gradients, so larger batches)


class TrainError(RuntimeError):
    """The run cannot start or go on as asked (its loss went non-finite); the message says what to change."""


@dataclass
class TrainResult:
    status: Literal["succeeded", "cancelled", "paused"]  # paused: a checkpoint at ``step``, to resume from
    step: int
    out_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)  # the last value of every metric
    checkpoint: Path | None = None
    reason: Literal["budget"] | None = None  # why a succeeded run ended before max_steps


def lr_factor(step: int, spec: JobSpec) -> float:
    """Multiplier of ``spec.lr`` for optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if step < spec.warmup_steps:
        return (step + 1) / (spec.warmup_steps + 1)
    if spec.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - spec.warmup_steps) / max(1, spec.max_steps - spec.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if spec.schedule == "cosine" else 1 - progress
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * shape


@dataclass
class Run:
    """Everything the loop needs, built once by :func:`setup_run`."""

    spec: JobSpec
    out: Path
    device: torch.device
    dtype: torch.dtype
    tokenizer: object
    model: nn.Module
    reference: Reference | None  # the exact base distribution: evaluation, and training unless cached
    cached: TopKTargets | None  # the base's cached top-k targets on the general corpus (reference: cached)
    domain: Corpus
    general: Corpus | None
    qa: list
    batches: MixedBatches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    chunk: int
    eos_id: int
    world: World
    step_losses: nn.Module  # model + losses; DistributedDataParallel under torchrun
    feed: StepFeed  # each step's micro-batches from ``batches``, the next one built while a step runs
    evaluations: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> held-out figures (model card)
    prompts: list[str] = field(default_factory=list)  # completed at every evaluation (mol_engine/samples.py)
    tasks: dict = field(default_factory=dict)  # metric name -> TaskFile scored at every evaluation (eval_tasks)
    tokens: int = 0  # real tokens (all ranks) of the steps done so far: ``train/tokens``, kept in each checkpoint
    kl_controller: KLController | None = None  # kl_weight: auto (the KL set-point), kept in each checkpoint

    def kl_weight(self) -> float:
        """λ for the next step: the spec's, or the controller's under ``kl_weight: auto``."""
        return self.kl_controller.weight if self.kl_controller else float(self.spec.kl_weight)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; nothing for float32."""
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def train(spec: JobSpec, out_dir: str | Path, callbacks: Sequence[Callback] = (), resume: bool = False) -> TrainResult:
    """Run ``spec`` (model and data fields already local paths), writing checkpoints under ``out_dir``.

    With ``resume`` the run continues from the newest complete checkpoint (or starts, if there is none).
    Returns how the run ended and the last value of every metric.
    """
    out = Path(out_dir)
    problem = seq_len_problem(spec.seq_len, model_context(spec.base_model), spec.base_model)
    if problem:  # a block longer than the model's positions: garbage at best, a huge step-0 allocation at worst
        raise TrainError(problem)
    check_trackers(spec.report_to)  # a missing tracker package fails the run before any work, on every rank
    world = join_world(pick_device(spec).type)
    use_threads()  # torch's threads by the machine's idle cores (mol_engine/threads.py), once per process
    trackers = []
    try:
        trackers = make_trackers(spec.report_to, out, spec.model_dump(mode="json")) if world.is_main else []
        cb = CallbackList([*callbacks, *trackers] if world.is_main else [])  # rank 0 reports for all ranks
        result = _loop(spec, out, cb, world, resume)
        # every rank done with its collectives before any tears the group down: a rank that exits while a peer
        # still talks to it can die in gloo's threads ("terminate called without an active exception")
        world.barrier()
        return result
    except Cancelled as stop:  # during sampling, tokenizing or caching, before step 1
        cb.on_event({"step": 0, "kind": "cancelled", "message": f"{stop}; checkpoints kept"})
        return TrainResult("cancelled", 0, out, {}, RunDir(out).latest_checkpoint())
    finally:
        close_trackers(trackers)
        world.close()


def _loop(spec: JobSpec, out: Path, cb: Callback, world: World, resume: bool) -> TrainResult:
    run = setup_run(spec, out, cb, world)
    try:
        return _steps(run, cb, resume)
    finally:
        run.feed.close()  # the batch built ahead: no thread outlives the run


def _steps(run: Run, cb: Callback, resume: bool) -> TrainResult:
    spec, out, world = run.spec, run.out, run.world
    start = _restore(run, cb) if resume else _check_fresh(out)
    last: dict[str, float] = {}
    if start == 0:
        last |= _evaluate(run, 0, cb)
    step, status, reason, saved = start, "succeeded", None, None
    for step in range(start + 1, spec.max_steps + 1):
        metrics = train_step(run, step)
        cb.on_metrics(step, metrics)
        last |= metrics
        crossed = False
        if step % spec.eval_every == 0 or step == spec.max_steps:
            last |= _evaluate(run, step, cb)
            crossed = _crosses_budget_now(run, step, cb)
        budget_stop = crossed and spec.on_budget == "stop"
        if step % spec.save_every == 0 or step == spec.max_steps or budget_stop:
            saved = _save(run, step, cb, keep_previous=budget_stop)
        if budget_stop and step < spec.max_steps:
            reason = "budget"
            break
        request = STOP_REQUESTS[world.agree_on(stop_request(cb), run.device)]  # rank 0's, on every rank
        if request and step < spec.max_steps:
            status = request
            if request == "paused" and (saved is None or step_of(saved) != step):
                saved = _save(run, step, cb, keep_previous=True)  # the point to resume from; the one before stays
            break
    message = {"cancelled": f"stopped at step {step} (checkpoints kept)",
               "paused": f"paused at step {step}: checkpoint {step_name(step)} saved; a resumed run continues from it",
               "budget": f"stopped by the forgetting budget at step {step} (checkpoints kept)"}.get(
        reason or status, f"finished at step {step}")
    cb.on_event({"step": step, "kind": status, "message": message} | ({"reason": reason} if reason else {}))
    return TrainResult(status, step, out, last, saved or RunDir(out).latest_checkpoint(), reason)


STOP_REQUESTS = (None, "cancelled", "paused")  # what a caller asks after a step, by its index (one broadcast)


def stop_request(cb: Callback) -> int:
    """The index in STOP_REQUESTS of what ``cb`` asks after a step: a cancel wins over a pause."""
    if cb.should_stop():
        return STOP_REQUESTS.index("cancelled")
    return STOP_REQUESTS.index("paused") if cb.should_pause() else 0


def _crosses_budget_now(run: Run, step: int, cb: Callback) -> bool:
    """Whether this step's evaluation crosses the budget (``max_general_kl`` or ``max_task_drop``), the
    ``budget_patience``-th in a row over it (rank 0's figures decide for every rank); if so, a ``budget`` event says
    so."""
    budget, patience, drop = run.spec.max_general_kl, run.spec.budget_patience, run.spec.max_task_drop
    if budget is None and drop is None:
        return False
    if not run.world.agree(first_crossing(run.evaluations, budget, patience, drop) == step, run.device):
        return False
    stop, kl, base = run.spec.on_budget == "stop", run.evaluations[step].get("eval/general_kl"), run.evaluations.get(0)
    message = budget_message(step, run.evaluations[step], budget, stop, patience, base, drop)
    cb.on_event({"step": step, "kind": "budget", "message": message, "general_kl": kl, "max_general_kl": budget,
                 "max_task_drop": drop, "task_drops": task_drops(run.evaluations[step], base or {}),
                 "budget_patience": patience, "on_budget": run.spec.on_budget})
    return True


def setup_run(spec: JobSpec, out: Path, cb: Callback | None = None, world: World | None = None) -> Run:
    """Load the model, reference and data and build the optimizer: everything :func:`train_step` needs."""
    cb, world = cb or Callback(), world or World()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    device = local_device(pick_device(spec))
    dtype = pick_dtype(spec, device)
    lora = spec.finetune == "lora"
    tokenizer = load_tokenizer(spec.base_model)
    eos_id = tokenizer.eos_token_id
    # Full fine-tuning keeps fp32 master weights (autocast computes in bf16); frozen LoRA bases stay in dtype.
    # Under FSDP full fine-tuning each rank loads only its shards, after the corpora (rank 0 may self-sample).
    sharded = uses_fsdp(spec.distributed, world, lora) and not lora
    attention, compiled = pick_attention(spec, device, dtype), use_compile(spec, device)
    model = None if sharded else _load_trained(spec, device, dtype if lora else torch.float32, attention)
    domain, general, general_files = _corpora(spec, out, model, tokenizer, device, world, cb)
    root = None
    if sharded:  # its layers compiled before they are sharded
        model, root = load_for_fsdp(spec.base_model, device, attention=attention, compiled=compiled)
    if lora:
        model = add_lora(model, spec)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compiled and not sharded:  # after self-sampling's generation, before DDP wraps the model
        compile_layers(model)
    needs_reference = ROUTES[spec.method][1] or general is not None
    # resident only when every step trains against it; else loaded for evaluation (or the cache build) alone
    resident = ROUTES[spec.method][1] and spec.reference != "cached"
    # with LoRA the base is the model with its adapters off, unless the anchor is another model (reference_model)
    anchor = spec.reference_model if lora else anchor_model(spec)
    reference = make_reference(model, lora=lora, resident=resident, path=anchor, device=device,
                               dtype=reference_dtype(spec, device, world),
                               matmul_dtype=None if dtype == torch.float32 else dtype,
                               compiled=compiled, load=load_frozen_for_fsdp if sharded else None) \
        if needs_reference else None
    model.train()
    n_domain, n_general = spec.rows_per_batch()
    batches = MixedBatches(domain.train, general.train if general and n_general else None, n_domain, n_general,
                           spec.seed, rank=world.rank, world_size=world.size)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    chunk = chunk_size(vocab_size, spec.loss_chunk_tokens, device)
    cached = None
    if spec.reference == "cached" and reference is not None and general is not None:
        cached = _cached_reference(spec, reference, general, general_files[0], vocab_size, dtype, device, chunk,
                                   world, cb)
    step_losses = wrap(model, world, device, spec.distributed, lora, root, method=spec.method, eos_id=eos_id,
                       chunk=chunk, reference=None if cached else reference, cached=cached,
                       kl_direction=spec.kl_direction)
    optimizer = _optimizer(model, spec, device)  # after wrapping: FSDP replaces the parameters with shards
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, spec))
    trainable, total = count_parameters(model)
    held = getattr(cached or (reference if resident else None), "kind", "none")
    cb.on_event({"step": 0, "kind": "config", "message": config_message(
        spec, (n_domain, n_general), held, getattr(reference, "kind", "none"), device, dtype, (trainable, total),
        world.size, (attention_of(model), compiled)), "kl_direction": spec.kl_direction,
        "rows": [n_domain, n_general], "attention": attention_of(model), "compile": compiled})
    qa = read_qa(spec.eval_data) if spec.eval_data else []
    heldout = (general if general is not None else domain).heldout
    prompts = job_prompts(spec.sample_prompts, qa, spec.qa_prompt, heldout, tokenizer)
    tasks = load_tasks([task_entry(e) for e in spec.eval_tasks], spec.best_metric) if spec.eval_tasks else {}
    feed = StepFeed(batches, spec.grad_accum, functools.partial(prepare, eos_id=eos_id, cached=cached),
                    pin_for=device if device.type == "cuda" else None)
    return Run(spec, out, device, dtype, tokenizer, model, reference, cached, domain, general, qa, batches,
               optimizer, scheduler, chunk, eos_id, world, step_losses, feed, prompts=prompts, tasks=tasks,
               kl_controller=_kl_controller(spec))


def _load_trained(spec: JobSpec, device: torch.device, dtype: torch.dtype, attention: str | None) -> nn.Module:
    """The model to train, with ``attention``; an architecture without the kernel ``auto`` picked gets
    transformers' default instead (an explicit choice fails, naming ``attention``)."""
    try:
        return load_model(spec.base_model, device, dtype, attention=attention)
    except ModelError:
        if spec.attention != "auto" or attention is None:
            raise
        return load_model(spec.base_model, device, dtype)


def _kl_controller(spec: JobSpec) -> KLController | None:
    """The KL set-point's controller for ``kl_weight: auto`` under MoL (the only method with a KL term), else None."""
    if spec.kl_weight != "auto" or spec.method != "mol":
        return None
    return KLController(target=spec.target_general_kl)


def anchor_model(spec: JobSpec) -> str:
    """The model directory the KL anchors to: ``reference_model`` when given, else the base."""
    return spec.reference_model or spec.base_model


def reference_dtype(spec: JobSpec, device: torch.device, world: World) -> torch.dtype:
    """The dtype a frozen copy of the base holds its weights in: the trained weights' as the model computes with
    them (float32 masters under autocast; bf16 where FSDP gathers them so), so that the reference runs the model's
    own numerics and the KL to it is exactly 0 at step 0. (With LoRA the reference is the model itself.)"""
    lora = spec.finetune == "lora"
    master = pick_dtype(spec, device) if lora else torch.float32
    return compute_weights_dtype(master, device, uses_fsdp(spec.distributed, world, lora))


def config_message(spec: JobSpec, rows: tuple[int, int], held: str, eval_reference: str, device, dtype,
                   params: tuple[int, int], processes: int, body: tuple[str, bool] = ("sdpa", False)) -> str:
    """The run's ``config`` event line. The KL settings and the reference are named as the spec names them, and
    only for MoL (CPT and domain-only train against no reference); ``holds`` says what is resident while training
    (``frozen-copy``, ``cached-top-k``, ``adapter-disabled``, ``none``), ``eval_reference`` what the KL gauge uses;
    ``body`` is (the attention implementation the model runs, whether its layers are compiled), as chosen from
    the spec's ``attention`` and ``compile``."""
    words = [f"method={spec.method}"]
    if spec.method == "mol":
        words += [f"kl_direction={spec.kl_direction}", f"kl_weight={spec.kl_weight}"]
        words += [f"target_general_kl={spec.target_general_kl}"] if spec.kl_weight == "auto" else []
        words += [f"reference={spec.reference}"]
    words += [f"rows/micro-batch domain:general={rows[0]}:{rows[1]}", f"finetune={spec.finetune}", f"holds={held}",
              f"eval_reference={eval_reference}", f"device={device}", f"dtype={str(dtype).removeprefix('torch.')}",
              f"trainable={params[0]:,}/{params[1]:,} params", f"processes={processes}",
              f"attention={body[0]}", f"compile={'on' if body[1] else 'off'}"]
    return " ".join(words)


def _corpora(spec: JobSpec, out: Path, model: nn.Module | None, tokenizer, device, world: World,
             cb: Callback) -> tuple[Corpus, Corpus | None, list[str]]:
    """The domain and general corpora (blocks over token stores), and the general corpus's files."""
    general_files = spec.general_data
    if spec.general_source == "self":  # rank 0 samples, the others read what it wrote
        with main_rank_first(world, out / ".self-sample.done"), \
                _sampler(model, spec, device, needed=not self_corpus_path(out).exists()) as sampler:
            general_files = [str(self_general_corpus(
                out, sampler, tokenizer, spec.self_sample_tokens, max_len=spec.seq_len, seed=spec.seed, device=device,
                progress=lambda point: cb.on_event({"step": 0, "kind": "self-sample", **point}),
                should_stop=cb.should_stop))]
    stores = _token_stores({"domain": spec.domain_data, "general": general_files}, tokenizer, out, world, cb)

    def corpus(name: str, seed: int) -> Corpus:
        return split_corpus(stores[name], seq_len=spec.seq_len, heldout_fraction=spec.heldout_fraction, seed=seed,
                            pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, packing=spec.packing)

    return corpus("domain", spec.seed), corpus("general", spec.seed + 1) if general_files else None, general_files


@contextlib.contextmanager
def _sampler(model: nn.Module | None, spec: JobSpec, device: torch.device,
             needed: bool) -> Iterator[nn.Module | None]:
    """The model self-sampling generates with, set up for generation (``modeling.for_generation``): ``model``; or,
    where the trained model is not loaded yet (FSDP loads it sharded after the corpora, and a sharded model cannot
    generate on rank 0 alone) and one is ``needed``, the base loaded whole for the with-block (in float32, as the
    full fine-tuning model), then freed; None when neither is there nor needed."""
    if model is None and not needed:
        yield None
        return
    sampler = model if model is not None else load_model(spec.base_model, device, torch.float32)
    try:
        with for_generation(sampler):
            yield sampler
    finally:
        if model is None:
            sampler.to("meta")  # frees every weight at once (see reference.OnDemandReference.release)


def _token_stores(files: dict[str, list[str]], tokenizer, out: Path, world: World,
                  cb: Callback) -> dict[str, list[TokenStore]]:
    """Each file's token store: rank 0 builds what is missing and lists them, the other ranks wait for it
    (:func:`main_rank_first`, polling a marker: a store of billions of tokens takes longer than any process group
    timeout) and open what it listed."""
    listing = out / ".token-stores.json"
    with main_rank_first(world, out / ".token-stores.done"):
        if not world.is_main:
            paths = json.loads(listing.read_text())
            return {name: [TokenStore(Path(p)) for p in found] for name, found in paths.items()}

        def progress(point: dict) -> None:
            cb.on_event({"step": 0, "kind": "token-store", **point})

        stores: dict[str, list[TokenStore]] = {name: [] for name in files}
        for name, paths in files.items():
            for i, path in enumerate(paths):
                try:
                    stores[name].append(open_or_build(path, tokenizer, progress, cb.should_stop))
                except DataError as err:  # name the spec field as well as the file and line
                    raise DataError(f"{name}_data[{i}]: {err}") from None
        listing.write_text(json.dumps({name: [str(s.path) for s in found] for name, found in stores.items()}))
        return stores


def _cached_reference(spec: JobSpec, reference: Reference, general: Corpus, data_file: str, vocab_size: int,
                      dtype: torch.dtype, device: torch.device, chunk: int, world: World, cb: Callback) -> TopKTargets:
    """The base's top-k targets on the general training blocks: reused from an earlier job, or built (rank 0)."""
    key = cache_key(anchor_model(spec), general.train, spec.reference_top_k, dtype)
    root = cache_root(data_file)
    # an on-demand base is loaded for a build only, and freed after it; it computes as in training (autocast)
    with main_rank_first(world, root / f".{key}.built"), released_after(reference), autocast(device, dtype):
        return load_or_build(reference, general.train, root=root, key=key, k=spec.reference_top_k,
                             vocab_size=vocab_size, device=device,
                             batch_size=max(spec.batch_size, BUILD_TOKENS // spec.seq_len), chunk=chunk,
                             log=lambda message: cb.on_event({"step": 0, "kind": "reference-cache",
                                                              "message": message}),
                             should_stop=cb.should_stop)


def _optimizer(model: nn.Module, spec: JobSpec, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=spec.lr, betas=(0.9, 0.95),
                             fused=device.type == "cuda")


def _check_fresh(out: Path) -> int:
    if RunDir(out).latest_checkpoint():
        raise TrainError(f"{out} already holds checkpoints: resume the run or choose another output directory")
    return 0


def _restore(run: Run, cb: Callback) -> int:
    ckpt = RunDir(run.out).latest_checkpoint()
    if ckpt is None:
        cb.on_rewind(-1)
        return 0
    state = load_checkpoint(ckpt, run.model, run.optimizer, run.scheduler, lora=run.spec.finetune == "lora")
    run.feed.load_state(state["data"])
    run.evaluations = {int(s): v for s, v in state.get("evaluations", {}).items()}
    run.tokens = int(state.get("tokens", 0))  # 0 for a checkpoint older than the counter
    if run.kl_controller and state.get("kl_controller"):
        run.kl_controller = KLController.from_state(state["kl_controller"], run.kl_controller.target)
    cb.on_rewind(state["step"])
    cb.on_event({"step": state["step"], "kind": "resumed", "message": f"resumed from {ckpt.name}"})
    return int(state["step"])


def _step_token_counts(batches: Sequence[Batch], method: str) -> list[int]:
    """This rank's target tokens of domain CE, general CE and general KL over the whole optimizer step, and its real
    tokens: sizes of the host-built target index, so nothing is read from the device."""
    ce_on_general, kl_on_general = ROUTES[method]
    n_domain = sum(len(b.index.domain) for b in batches)
    n_general = sum(len(b.index.general) for b in batches)
    return [n_domain, n_general * ce_on_general, n_general * kl_on_general, sum(b.index.tokens for b in batches)]


def train_step(run: Run, step: int) -> dict[str, float]:
    """One optimizer step (``step`` counts from 1): micro-batches, losses, backward, clip, update; its metrics.

    Its batches were built on the host during the previous step (``run.feed``), with every count the step needs;
    the host reads the device once, before the update: the loss sums and gradient norm it logs and checks.
    """
    spec = run.spec
    started = time.perf_counter()
    kl_weight = run.kl_weight()  # set by the previous step's figures under kl_weight: auto: no read of its own
    host = run.feed.next_step(ahead=step < spec.max_steps)
    counts = _step_token_counts(host, spec.method)
    if run.world.size > 1:  # summed over ranks on the device; read below with the step's figures
        counts = run.world.sum(torch.tensor(counts, dtype=torch.float64), run.device)
    # Normalise by the step's token counts over all ranks (per rank: DDP averages the gradients).
    n_ce, n_kl = (counts[0] + counts[1]) / run.world.size, counts[2] / run.world.size
    sums = torch.zeros(3, device=run.device)  # domain CE, general CE, general KL (token sums)
    for i, batch in enumerate(host):
        # DDP all-reduces once per step (no_sync before the last micro-batch); FSDP reduce-scatters every
        # micro-batch, so each rank only ever holds its shard of the gradients (StepLosses has no no_sync)
        sync = i == len(host) - 1 or not hasattr(run.step_losses, "no_sync")
        with run.autocast(), contextlib.nullcontext() if sync else run.step_losses.no_sync():
            parts = run.step_losses(batch.to(run.device))
            loss = objective(parts, n_ce, n_kl, kl_weight)
            loss.backward()
        sums += torch.stack([parts.domain_ce, parts.general_ce, parts.general_kl]).detach()
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm or float("inf"))
    sums, grad_norm, counts = _read(run, sums, grad_norm, counts)
    _check_finite(run, step, [*sums, grad_norm])  # every rank sees the same sums: all stop together
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.tokens += round(counts[3])
    domain_ce, general_ce, general_kl = (s / max(c, 1) for s, c in zip(sums, counts[:3], strict=True))
    metrics = {"train/domain_ce": domain_ce}
    if counts[2]:
        metrics["train/general_kl"] = general_kl
        if run.kl_controller:  # the all-ranks KL every rank read: all ranks move λ alike, for the next step
            run.kl_controller.update(general_kl)
    if run.kl_controller:
        metrics["train/kl_weight"] = kl_weight
    if counts[1]:
        metrics["train/general_ce"] = general_ce
    ce_part = (sums[0] + sums[1]) / max(counts[0] + counts[1], 1)
    return metrics | {
        "train/loss": ce_part + kl_weight * general_kl * (counts[2] > 0),
        "train/lr": lr,
        "train/grad_norm": grad_norm,
        "train/tokens_per_s": counts[3] / (time.perf_counter() - started),
        "train/tokens": run.tokens,  # cumulative: what the service meters as the job's processed tokens
    }


def _read(run: Run, sums: torch.Tensor, grad_norm: torch.Tensor,
          counts: list[int] | torch.Tensor) -> tuple[list[float], float, list[float]]:
    """The step's one read of the device: the loss sums over all ranks, the gradient norm and, when several ranks
    summed them there, the token counts (else they are the host's already)."""
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, already reduced over the ranks' shards
        grad_norm = grad_norm.full_tensor()
    on_device = [run.world.sum(sums, run.device).double(), grad_norm.detach().double().reshape(1)]
    summed = isinstance(counts, torch.Tensor)
    values = torch.cat([*on_device, counts] if summed else on_device).tolist()
    return values[:3], values[3], values[4:] if summed else counts


def _check_finite(run: Run, step: int, values: list[float]) -> None:
    """Raise TrainError, before the optimizer applies the step, when a loss term or the gradient norm is not finite."""
    names = ("train/domain_ce", "train/general_ce", "train/general_kl", "train/grad_norm")
    bad = [f"{name} = {value}" for name, value in zip(names, values, strict=True) if not math.isfinite(value)]
    if not bad:
        return
    kept = RunDir(run.out).latest_checkpoint()
    kept_text = f"the last good checkpoint {kept.name} is kept" if kept else "no checkpoint was written yet"
    what = "gradient norm" if bad[0].startswith("train/grad_norm") else "loss"
    raise TrainError(f"non-finite {what} at step {step}: {', '.join(bad)}; the step was not applied and {kept_text}; "
                     f"lower lr{' or kl_weight' if 'kl' in bad[0] else ''}")


def _evaluate(run: Run, step: int, cb: Callback) -> dict[str, float]:
    spec = run.spec
    started = time.perf_counter()  # the event's seconds: what the service's time estimates count per evaluation
    run.model.eval()
    n_blocks = spec.eval_batches * spec.batch_size
    general = run.general.heldout.select(range(min(n_blocks, len(run.general.heldout)))) if run.general else None
    # an on-demand base is loaded for this only; an FSDP model's root group is gathered for it
    with run.autocast(), gathered(run.step_losses), released_after(run.reference) as reference:
        metrics = heldout_metrics(
            run.model, domain=run.domain.heldout.select(range(min(n_blocks, len(run.domain.heldout)))),
            general=general, reference=reference, batch_size=spec.batch_size, eos_id=run.eos_id, chunk=run.chunk,
            kl_direction=spec.kl_direction, device=run.device)
        if run.qa:
            with for_generation(run.model):
                metrics["eval/qa_exact_match"] = qa_exact_match(
                    run.model, run.tokenizer, run.qa, prompt=spec.qa_prompt, max_new_tokens=spec.qa_max_new_tokens,
                    device=run.device)
        drift = _drift(run, step, general, reference)
    metrics |= _score_tasks(run)
    samples = _complete_samples(run)
    run.model.train()
    run.evaluations[step] = metrics
    cb.on_metrics(step, metrics)
    shown = ", ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in metrics.items())
    cb.on_event({"step": step, "kind": "eval", "message": f"evaluation at step {step}: {shown}",
                 "seconds": round(time.perf_counter() - started, 3)})
    if samples is not None:
        cb.on_event(samples_event(step, samples))
    if drift is not None:
        cb.on_event(drift_event(step, drift, run.tokenizer))
    return metrics


def _drift(run: Run, step: int, general, reference: Reference | None) -> list[PassageKL] | None:
    """Each evaluated held-out general passage's per-token KL to the base (mol_engine/drift.py), after step 0 (the
    base has none) and where there is a base to compare with; rank 0's (every rank computes under FSDP)."""
    if not step or general is None or reference is None or not (run.world.is_main or is_sharded(run.step_losses)):
        return None
    passages = passage_kls(run.model, reference, general, batch_size=run.spec.batch_size, eos_id=run.eos_id,
                           chunk=run.chunk, kl_direction=run.spec.kl_direction, device=run.device)
    return passages if run.world.is_main else None


def _score_tasks(run: Run) -> dict[str, float]:
    """Each of ``eval_tasks``' scores (mol_engine/task_eval.py, lm-eval) on the model in eval mode: rank 0's, as the
    samples (under FSDP every rank scores, as each layer's forward is a collective). A task of N items adds N
    scored items to each evaluation."""
    if not run.tasks or not (run.world.is_main or is_sharded(run.step_losses)):
        return {}
    with run.autocast(), gathered(run.step_losses), for_generation(run.model):
        scores = task_scores(run.tasks, run.model, run.tokenizer)
    return scores if run.world.is_main else {}


def _complete_samples(run: Run) -> list[Sample] | None:
    """The sample prompts' completions by the model in eval mode (rank 0's; under FSDP every rank generates, as
    each layer's forward is a collective); None when there are none to report."""
    sharded = is_sharded(run.step_losses)
    if not run.prompts or not (run.world.is_main or sharded):
        return None
    with run.autocast(), gathered(run.step_losses), for_generation(run.model):
        samples = complete(run.model, run.tokenizer, run.prompts, run.spec.sample_max_tokens)
    return samples if run.world.is_main else None


def _save(run: Run, step: int, cb: Callback, keep_previous: bool = False) -> Path:
    """Write ``step-N`` and prune older ones, keeping the final step, the best checkpoint (recorded in
    ``best.json``) and, with ``keep_previous``, the newest one before this; returns its path.

    Under FSDP every rank writes its own shards; otherwise rank 0 writes the checkpoint. A failed write (a full
    disk) raises :class:`CheckpointError` on every rank, not only on the one that failed.
    """
    started = time.perf_counter()  # the event's seconds: what the service's time estimates count per save
    spec = run.spec.model_dump(mode="json")
    state = {"data": run.feed.state(), "spec": spec, "finetune": run.spec.finetune, "tokens": run.tokens,
             "base_model": run.spec.base_model, "evaluations": {str(s): v for s, v in run.evaluations.items()},
             "model_card": build_card(spec, step, run.evaluations)}
    if run.kl_controller:
        state["kl_controller"] = run.kl_controller.state()
    keep, protect = run.spec.keep_checkpoints, {run.spec.max_steps}
    best = _best_step(run, step)
    protect |= {best} if best is not None else set()
    previous = RunDir(run.out).latest_checkpoint() if keep_previous else None
    protect |= {step_of(previous)} if previous else set()
    if is_sharded(run.step_losses):
        path = save_sharded_checkpoint(run.out, step, run.model, run.tokenizer, run.optimizer, run.scheduler, state,
                                       keep=keep, protect=protect)
    else:
        path = _save_on_rank_0(run, step, state, keep, protect)
    if run.world.is_main:
        write_best(run.out, best, run.spec.best_metric, run.spec.max_general_kl, run.evaluations.get(best),
                   run.spec.max_task_drop)
    cb.on_event({"step": step, "kind": "checkpoint", "message": f"saved {path.name}", "name": path.name,
                 "seconds": round(time.perf_counter() - started, 3)})
    return path


def _best_step(run: Run, step: int) -> int | None:
    """The best checkpoint once ``step-N`` is written: among the checkpoints kept so far and this one, those
    evaluated at their step. (One pruned earlier was worse than the best then, which only improves since.)"""
    kept = {step_of(p) for p in RunDir(run.out).checkpoint_dirs()} | {step}
    history = {s: run.evaluations[s] for s in kept if s in run.evaluations}
    return best_checkpoint(history, run.spec.max_general_kl, run.spec.best_metric, run.evaluations.get(0),
                           run.spec.max_task_drop)


def _save_on_rank_0(run: Run, step: int, state: dict, keep: int | None, protect: set[int]) -> Path:
    path, failed = RunDir(run.out).checkpoint(step), None
    if run.world.is_main:
        try:
            path = save_checkpoint(run.out, step, run.model, run.tokenizer, run.optimizer, run.scheduler, state,
                                   keep=keep, protect=protect)
        except CheckpointError as err:
            failed = err
    # every rank resumes from the same, complete checkpoint, and stops together when there is none
    if run.world.agree(failed is not None, run.device):
        raise failed or CheckpointError(f"rank 0 could not write checkpoint {path.name} (its log says why)")
    return path
