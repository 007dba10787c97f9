"""JobSpec: the single definition of a training job, shared by the library, the CLI, the API and the worker.

Data and model fields hold *references* (paths for the CLI, ids for the API); whoever runs the job resolves
them to local paths with :meth:`JobSpec.resolve_paths` before calling :func:`mol_engine.train.train`.

Every closed set of choices a spec field takes is a ``Literal`` alias here (``Method``, ``KLDirection``,
``Packing``, ...): the engine, the API and the CLI import it from this module, and the dashboard reads it from the
JSON schema (``GET /v1/jobspec``, where each becomes an ``enum``), so a choice is spelled in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .task_names import task_entry

# the spec's vocabularies: each closed set of choices, spelled once
Method = Literal["mol", "cpt", "domain_only"]
GeneralSource = Literal["corpus", "self"]
KLDirection = Literal["reverse", "forward"]
ReferenceMode = Literal["exact", "cached"]
Finetune = Literal["full", "lora"]
Packing = Literal["concat", "document"]
Schedule = Literal["cosine", "linear", "constant"]
OnBudget = Literal["warn", "stop"]
BestMetric = Literal["domain_ppl", "qa_exact_match"]
Precision = Literal["auto", "fp32", "bf16"]
Attention = Literal["auto", "sdpa", "flash_attention_2", "flex"]
Compile = Literal["auto", "on", "off"]
DistributedMode = Literal["auto", "ddp", "fsdp"]
Tracker = Literal["tensorboard", "mlflow", "wandb"]
MAX_SELF_SAMPLE_TOKENS = 50_000_000  # sampling runs before step 1: beyond this it takes hours on any GPU
MAX_NPROC = 64  # processes of one job: the service schedules single-node jobs, and no node has more GPUs
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_SAMPLE_PROMPTS = 16  # prompts completed at every evaluation, listed or in a file: each costs a generation
MAX_SAMPLE_PROMPT_CHARS = 4_000  # one prompt; the model sees at most its context minus the completion
SamplePrompt = Annotated[str, Field(min_length=1, max_length=MAX_SAMPLE_PROMPT_CHARS)]
MAX_EVAL_TASKS = 8  # task files scored at every evaluation: each costs its N items per evaluation
TASK_METRICS = ("acc", "exact_match")  # a multiple-choice task's accuracy, an exact-match task's
TaskMetric = Annotated[str, Field(pattern=r"^task/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/(acc|exact_match)$")]




MAX_KL_WEIGHT = 1000
_FixedWeight = Annotated[float, Field(ge=0, le=MAX_KL_WEIGHT)]
_FIXED_WEIGHT = TypeAdapter(_FixedWeight, config=ConfigDict(allow_inf_nan=False))


def _fixed_or_auto(value: object, _handler: Callable) -> float | str:
    """``auto``, or a number's own checks with their usual messages (``Input should be greater than or equal to
    0``), not a union's two lines."""
    if value == "auto":
        return "auto"
    try:
        return _FIXED_WEIGHT.validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] in ("float_type", "float_parsing"):
            raise PydanticCustomError("kl_weight", "Input should be a number or 'auto'") from None
        raise PydanticCustomError(first["type"], first["msg"]) from None


# λ: a number, or auto (the KL set-point, mol_engine/kl_controller.py)
KLWeight = Annotated[_FixedWeight | Literal["auto"], WrapValidator(_fixed_or_auto)]


class LoraSpec(BaseModel):
    """LoRA settings, used when ``finetune == "lora"``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rank: int = Field(16, ge=1, le=1024, description="r, the rank of each adapter's update B·A: more rank, more "
                      "trainable parameters and capacity")
    alpha: float = Field(32.0, gt=0, description="the adapter's update is scaled by alpha / rank (PEFT's lora_alpha)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch's input while training")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="the modules that get adapters: all-linear (every linear layer but the output "
        "head), or a list of module names, e.g. [q_proj, v_proj]")


class JobSpec(BaseModel):
    """A domain-adaptation job: base model, corpora, method and hyperparameters, with defaults."""

    # allow_inf_nan: JSON has no Infinity or NaN; a spec holding one could be neither stored nor trained on
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str = Field("mol-job", min_length=1, max_length=200, description="the job's label in lists, reports "
                      "and the model card (no control characters)")
    base_model: str = Field(min_length=1, description=(
        "Hugging Face model directory (or, via the API, a model id, or a kept checkpoint of one of your jobs to "
        "continue from: job:<id>@best, job:<id>@final or job:<id>@step-N; a LoRA checkpoint is merged into its "
        "base first and the new job trains the merged weights, with a new adapter if finetune is lora)"))
    domain_data: list[str] = Field(min_length=1, description="domain corpus files (JSONL `text`, .txt, Parquet)")
    general_data: list[str] = Field(default_factory=list, description="general corpus files")
    general_source: GeneralSource = Field(
        "corpus", description="where the general rows come from: corpus (general_data) or self (text sampled from "
        "the base model before training, self_sample_tokens of it; general_data must then be empty)")
    self_sample_tokens: int = Field(200_000, ge=1_000, le=MAX_SELF_SAMPLE_TOKENS, description=(
        "tokens sampled from the base when source=self (at most 50M: more takes hours; upload a general corpus)"))
    eval_data: str | None = Field(None, description="optional QA set (JSONL with `question`, `answer`)")

    method: Method = Field(
        "mol", description="mol (Mixture of Losses, arXiv 2505.12043): cross-entropy on the domain rows plus "
        "kl_weight x the KL to the frozen base model on the general rows, which learns the domain while anchoring "
        "the model's general behaviour to the base; cpt: the plain continual pre-training baseline, cross-entropy "
        "on every row (domain and general alike); domain_only: cross-entropy on domain rows only, no general rows")
    ratio: str = Field(
        "1:1", description="domain:general rows in each micro-batch, e.g. '1:1' or '4:1' (rounded to the batch, at "
        "least one of each; domain_only ignores it). Each term is averaged over its own tokens, so the ratio does "
        "not weigh CE against KL (kl_weight does): it splits each step's rows, and with them its compute and how "
        "many tokens each term's estimate rests on. The paper found 1:1 the best balance")
    kl_weight: KLWeight = Field(
        1.0, description="λ in loss = CE(domain rows) + λ·KL(general rows, to the base): how much "
        "domain cross-entropy one nat of KL to the base is worth, i.e. the trade between learning the domain and "
        "keeping the base's general behaviour. Higher keeps the model closer to the base (lower eval/general_kl, "
        "less forgetting) and learns the domain more slowly; lower learns faster and drifts further; 0 drops the "
        "anchor (the general rows then train nothing); 1 adds the two unweighted; auto: a controller sets λ each step "
        "so that the KL settles near target_general_kl (the drift you accept rather than a weight), logged as "
        "train/kl_weight. Only mol has a KL term")
    target_general_kl: float | None = Field(
        None, gt=0, le=100, description="with kl_weight: auto, the KL to the base (nats/token) on general text the "
        "run should settle at: each step λ rises (at most 0.4%) while the running KL on the general rows is above it "
        "and falls while it is below, from 1 and within [0.01, 100] (PPO's adaptive KL controller). Give both "
        "fields or neither")
    kl_direction: KLDirection = Field(
        "reverse", description="which KL the general rows minimise. reverse, the default, KL(p_model ‖ p_base): "
        "mode-seeking, it penalises the model for putting probability where the base puts little, and lets it "
        "drop some of the base's alternatives. forward, KL(p_base ‖ p_model): mass-covering, it penalises the "
        "model for giving little probability to any token the base finds likely (distillation on the base's soft "
        "targets). eval/general_kl is measured in the same direction, so compare runs of one direction")
    reference: ReferenceMode = Field(
        "exact", description="the base distribution the KL compares with. exact: the base model runs on the general "
        "rows every step (one more forward pass per step; under full fine-tuning a frozen copy of the base is kept "
        "for it); cached: its top-k next-token distribution (reference_top_k tokens plus one tail bucket), "
        "computed once per corpus and model and reused (a KL of coarsened distributions, never above the exact "
        "one). mol only")
    reference_top_k: int = Field(64, ge=1, le=4096, description="tokens per position the cached reference keeps")
    reference_model: str | None = Field(None, min_length=1, description=(
        "the model the KL anchors to and eval/general_kl measures against (a directory, or via the API a model id "
        "or job:<id>@<checkpoint>); null: the base model, and via the API for a job continued from a checkpoint the "
        "original base of its lineage (the model the first job of the chain trained from), not the checkpoint. It "
        "must share the base's tokenizer"))

    finetune: Finetune = Field(
        "full", description="full: train every weight; lora: train low-rank adapters only (settings in lora), "
        "far fewer trainable parameters and optimizer state, and the base the KL compares with is the same model "
        "with its adapters disabled (no second copy of the weights)")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings, used when finetune is lora")

    seq_len: int = Field(512, ge=8, le=131_072, description="tokens per row: documents are packed into blocks of "
                         "seq_len tokens (see packing)")
    packing: Packing = Field(
        "concat", description="concat: documents run on within a block; document: position ids restart at each "
        "document and attention stays inside it")
    batch_size: int = Field(8, ge=1, le=4096, description="rows per micro-batch")
    grad_accum: int = Field(1, ge=1, le=1024, description="micro-batches per optimizer step: each term is "
                            "averaged over the whole step's tokens, so a step equals one batch of batch_size x "
                            "grad_accum rows while holding one micro-batch's activations at a time")
    lr: float = Field(
        2e-5, gt=0, le=1.0, description="AdamW's peak learning rate, reached after warmup_steps and then following "
        "schedule. The default suits full fine-tuning of a pre-trained model (1e-5 to 5e-5 is usual); LoRA "
        "usually wants about ten times more (1e-4 to 2e-4). Too high and the domain CE falls fast while the KL to "
        "the base climbs (forgetting that kl_weight then has to pull back); too low and little is learnt in "
        "max_steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the learning rate the schedule ends at, as a "
                                "fraction of lr")
    warmup_steps: int = Field(20, ge=0, description="steps over which the learning rate climbs linearly to lr")
    schedule: Schedule = Field(
        "cosine", description="the learning rate after warm-up: cosine or linear decay to lr x min_lr_ratio at "
        "max_steps, or constant")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW's decoupled weight decay (not on biases and "
                                "norms)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradients are clipped to this norm; null: no clipping")
    max_steps: int = Field(
        1000, ge=1, le=10_000_000, description="optimizer steps the job trains for. Each step reads batch_size x "
        "grad_accum rows of seq_len tokens per process (split by ratio), so the domain tokens seen are max_steps "
        "times the domain rows of a step times seq_len; the schedule decays over max_steps, and the last step is "
        "always evaluated and saved. Too few and the domain is not learnt; many passes over a small domain corpus "
        "overfit it (watch the held-out eval/domain_ppl)")

    eval_every: int = Field(100, ge=1, description="steps between evaluations (held-out perplexity, KL to the base, "
                            "QA, samples); step 0, the base, is evaluated too")
    eval_batches: int = Field(8, ge=1, description="held-out blocks per corpus at each evaluation, in batches")
    heldout_fraction: float = Field(0.05, gt=0, lt=0.5, description="the share of each corpus's documents held out "
                                    "for evaluation (a seeded sample, never trained on)")
    qa_max_new_tokens: int = Field(16, ge=1, le=512, description="tokens generated per QA answer (greedy)")
    qa_prompt: str = Field("Question: {question}\nAnswer:", description="how a QA question is put to the model; "
                           "must contain {question}")
    sample_prompts: Annotated[list[SamplePrompt], Field(max_length=MAX_SAMPLE_PROMPTS)] | SamplePrompt | None = Field(
        None, description="prompts the model completes (greedy) at every evaluation, the base's at step 0: a list, "
        "or a JSONL file (a dataset, via the API) of {\"prompt\": ...} rows; null: 2 QA questions and 2 held-out "
        "general-text prefixes; []: none")
    sample_max_tokens: int = Field(48, ge=1, le=256, description="tokens per sample completion")
    save_every: int = Field(200, ge=1, description="steps between checkpoints (and at the last step)")
    keep_checkpoints: int | None = Field(
        3, ge=1, description="keep the newest N checkpoints and the final one, deleting older ones once a newer "
        "one is complete; null keeps all")

    max_general_kl: float | None = Field(
        None, gt=0, description="forgetting budget: the KL to the base (nats/token) on held-out general text the "
        "job accepts; each evaluation after training is compared with it; null: no budget. Under MoL the KL rises "
        "in the first steps, then falls as the KL term pulls the model back (the demo: 0.36 at step 10, 0.07 at "
        "step 200, 0.04 at 400), so the budget is crossed only once the KL stays over it without falling "
        "(budget_patience)")
    on_budget: OnBudget = Field(
        "warn", description="when the budget is crossed (budget_patience evaluations in a row over max_general_kl, "
        "the KL not falling over them): warn (an event, training goes on) or stop (the job ends, stop reason "
        "budget, with a checkpoint at that step; the best checkpoint within the budget, if any, is kept)")
    budget_patience: int = Field(
        4, ge=1, le=1000, description="evaluations in a row over max_general_kl, the last no lower than the first, "
        "that cross the budget: the early rise of the KL, which then falls, crosses none (4: the least that "
        "stopped no demo run that ends within its budget, evaluated every 10 to 100 steps); 1 judges each "
        "evaluation alone")
    best_metric: BestMetric | TaskMetric = Field(
        "domain_ppl", description="the figure that picks the best checkpoint within the budget: domain_ppl "
        "(lowest), qa_exact_match (highest; needs eval_data), or a task's score task/<name>/acc (multiple choice) "
        "or task/<name>/exact_match (highest; the task must be in eval_tasks)")
    eval_tasks: Annotated[list[str], Field(max_length=MAX_EVAL_TASKS)] = Field(
        default_factory=list, description="task files (lm-eval, as task evaluation: JSONL of {question, choices, "
        "answer} or {question, answer}; paths, or via the API task dataset ids) scored at every evaluation, the "
        "base's at step 0, as task/<name>/acc (multiple choice) or task/<name>/exact_match; an entry NAME=REF names "
        "the task, else it is named by its file name (its dataset id via the API). Cost: a task of N items adds N "
        "scored items (N x its choices log-likelihoods, or N greedy generations) per evaluation")
    max_task_drop: float | None = Field(
        None, gt=0, le=100, description="forgetting budget on eval_tasks: the most points (percent) any task's score "
        "may fall below the base's (step 0) score; crossed when some task is more than this below it for "
        "budget_patience evaluations in a row, then on_budget acts as for max_general_kl; null: no such budget")

    seed: int = Field(0, description="seeds the held-out split, the order of the training blocks, the sampled "
                      "general text and torch's generator (adapter initialisation, dropout): a rerun repeats the job")
    precision: Precision = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; fp32 or bf16 to choose")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass instead of keeping them: less memory, an "
        "extra forward pass of time per step")
    attention: Attention = Field(
        "auto", description="the attention kernel: sdpa (PyTorch's scaled_dot_product_attention), flash_attention_2 "
        "(CUDA, bf16, needs the flash-attn package; packed documents run as variable-length sequences) or flex "
        "(PyTorch FlexAttention, CUDA: packed documents get a block-sparse mask); auto: flash_attention_2 on CUDA "
        "in bf16 when flash-attn is installed, else flex on CUDA with packing: document, else sdpa. With packing: "
        "document, sdpa builds a dense [T, T] mask per row (17 GiB at seq_len 131,072): on a GPU pick "
        "flash_attention_2 or flex for long sequences")
    compile: Compile = Field(
        "auto", description="torch.compile each decoder layer (the frozen reference's too): faster GPU steps after "
        "compiling at the start (seconds to minutes); auto: on on CUDA, off on CPU (compiling there costs more than "
        "it saves on small runs); set off if compilation fails for a model")
    distributed: DistributedMode = Field(
        "auto", description="how several processes (torchrun) share the model: ddp keeps a full replica per "
        "process, fsdp shards parameters, gradients and optimizer state (FSDP2); auto picks fsdp for full "
        "fine-tuning and ddp for LoRA")
    nproc: int = Field(
        1, ge=1, le=MAX_NPROC, description="processes (one per GPU) the service runs the job on, under torchrun on "
        "one node; `mol train` ignores it (the launcher sets the process count). batch_size is per process")
    priority: int = Field(
        0, ge=0, description="the service's scheduling only (`mol train` and the engine ignore it): the order of "
        "this owner's queued jobs, highest first, which also breaks ties between owners served equally; it never "
        "gives an owner a larger share of the workers. At most the owner's max_priority (MOL_OWNER_MAX_PRIORITY)")
    loss_chunk_tokens: int | None = Field(
        None, ge=1, description="positions per loss chunk (the head's logits are formed a chunk at a time); None "
        "sizes chunks to the device: up to 64 MiB of fp32 logits and 512 positions on a CPU, up to 1 GiB (and 1/64 "
        "of its memory) on a GPU"
    )
    report_to: list[Tracker] = Field(
        default_factory=list, max_length=3, description="experiment trackers that also receive the metrics (as "
        "Hugging Face's Trainer): tensorboard, mlflow, wandb; each writes under the run directory (wandb offline) "
        "unless its own environment variables say otherwise; needs `pip install 'mol-studio[trackers]'`")

    @field_validator("ratio")
    @classmethod
    def _check_ratio(cls, value: str) -> str:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise ValueError("ratio must look like 'D:G' with positive integers, e.g. '1:1' or '4:1'")
        return f"{int(match[1])}:{int(match[2])}"

    @field_validator("nproc")
    @classmethod
    def _check_nproc_device(cls, value: int, info: ValidationInfo) -> int:
        device = info.data.get("device", "auto")
        if value > 1 and re.fullmatch(r"\s*cuda\s*:\s*\d+\s*", device):
            raise ValueError(f"{value} processes cannot all run on device '{device}': with nproc above 1 each "
                             f"process takes its own GPU, so set device to cuda or auto (or nproc to 1)")
        return value

    @field_validator("attention")
    @classmethod
    def _check_attention(cls, value: str, info: ValidationInfo) -> str:
        device, precision = info.data.get("device", "auto").strip(), info.data.get("precision", "auto")
        if value == "flash_attention_2" and device == "cpu":
            raise ValueError("flash_attention_2 runs on CUDA only: with device cpu choose sdpa (or auto)")
        if value == "flash_attention_2" and precision == "fp32":
            raise ValueError("flash_attention_2 computes in bf16 or fp16 only: with precision fp32 choose sdpa or "
                             "flex (or set precision to bf16 or auto)")
        if value == "flex" and device == "cpu":
            raise ValueError("flex has no backward pass on CPU (PyTorch's FlexAttention trains on CUDA only): with "
                             "device cpu choose sdpa (or auto)")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if CONTROL.search(value):
            raise ValueError("name must not contain control characters (such as NUL or a newline)")
        return value

    @field_validator("qa_prompt")
    @classmethod
    def _check_prompt(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("qa_prompt must contain the placeholder {question}")
        return value

    @model_validator(mode="after")
    def _check_general(self) -> JobSpec:
        if self.general_source == "self" and self.general_data:
            raise ValueError("general_data must be empty when general_source is 'self'")
        needs_general = self.method != "domain_only" and self.general_source == "corpus"
        if needs_general and not self.general_data:
            raise ValueError(
                f"general_data is required for method '{self.method}' "
                "(or set general_source: self to sample general text from the base model)"
            )
        if self.reference == "cached" and self.method != "mol":
            raise ValueError(f"reference 'cached' only applies to method 'mol' (method is '{self.method}')")
        if self.max_general_kl is not None and self.general_source == "corpus" and not self.general_data:
            raise ValueError("max_general_kl needs held-out general text: set general_data "
                             "(or general_source: self)")
        if self.best_metric == "qa_exact_match" and not self.eval_data:
            raise ValueError("best_metric 'qa_exact_match' needs eval_data (a QA set)")
        self._check_tasks()
        if (self.kl_weight == "auto") != (self.target_general_kl is not None):
            raise ValueError("kl_weight: auto and target_general_kl go together: give target_general_kl (the KL "
                             "to settle at) with kl_weight: auto, or a numeric kl_weight without target_general_kl")
        if self.method != "domain_only" and self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 so each step holds domain and general rows")
        return self

    def _check_tasks(self) -> None:
        """eval_tasks' names are distinct; best_metric and max_task_drop refer to tasks there are."""
        names = self.task_names()
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"eval_tasks: two tasks are named {', '.join(twice)}; name them apart with NAME=REF")
        if self.best_metric.startswith("task/") and self.best_metric.split("/")[1] not in names:
            raise ValueError(f"best_metric '{self.best_metric}' names a task not in eval_tasks "
                             f"({', '.join(names) or 'none'}): add it there or pick another metric")
        if self.max_task_drop is not None and not names:
            raise ValueError("max_task_drop needs eval_tasks (the tasks whose drop it bounds)")

    def task_names(self) -> list[str]:
        """Each ``eval_tasks`` entry's name, as its metrics are logged (``task/<name>/...``)."""
        return [task_entry(e)[0] for e in self.eval_tasks]

    def task_refs(self) -> list[str]:
        """Each ``eval_tasks`` entry's reference (a path, or a dataset id via the API), its name dropped."""
        return [task_entry(e)[1] for e in self.eval_tasks]

    @property
    def uses_general(self) -> bool:
        """Whether steps draw general rows (every method but ``domain_only``)."""
        return self.method != "domain_only"

    def rows_per_batch(self) -> tuple[int, int]:
        """(domain rows, general rows) in one micro-batch: the ratio rounded, at least one of each."""
        if not self.uses_general:
            return self.batch_size, 0
        d, g = (int(x) for x in self.ratio.split(":"))
        n_domain = round(self.batch_size * d / (d + g))
        n_domain = min(max(n_domain, 1), self.batch_size - 1)
        return n_domain, self.batch_size - n_domain

    def resolve_paths(self, resolve: Callable[[str], str]) -> JobSpec:
        """A copy whose model and data references went through ``resolve`` (reference -> local path)."""
        return self.model_copy(
            update={
                "base_model": resolve(self.base_model),
                "reference_model": resolve(self.reference_model) if self.reference_model else None,
                "domain_data": [resolve(p) for p in self.domain_data],
                "general_data": [resolve(p) for p in self.general_data],
                "eval_data": resolve(self.eval_data) if self.eval_data else None,
                "sample_prompts": resolve(self.sample_prompts) if isinstance(self.sample_prompts, str)
                else self.sample_prompts,
                # each task keeps its name (a dataset id's, not its stored file's): NAME=PATH
                "eval_tasks": [f"{name}={resolve(ref)}" for name, ref in map(task_entry, self.eval_tasks)],
            }
        )


def format_validation_error(error: Exception) -> str:
    """One line per problem, each naming the field at fault (``lora.rank: ...``)."""
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return str(error)
    lines = []
    for item in errors():
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{where}: {message}")
    return "\n".join(lines)
