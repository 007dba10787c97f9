"""Jobs: a job and its page, its checkpoints, events, metric points, log, trackers, the estimate of one, and the
words (statuses, event kinds) their answers use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mol_engine.spec import Tracker
from store.jobs import JobStatus

from .common import UtcDatetime
from .usage import JobUsageOut


class JobSummary(BaseModel):
    """A job as lists show it: its state, without the spec (``base_model`` and ``method`` only)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    status: JobStatus
    base_model: str | None
    method: str | None
    step: int
    max_steps: int
    progress: float
    last_metrics: dict[str, Any]
    error: str | None
    cancel_requested: bool
    pause_requested: bool = False  # a running job's runner saves a checkpoint at its next step and pauses
    attempt: int
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    stop_reason: str | None = None  # why a succeeded job ended before max_steps: "budget" (its forgetting budget)
    priority: int = 0  # the spec's: orders the owner's own queued jobs (store/scheduling.py)
    queue_position: int | None = Field(None, description=(
        "a queued job's place (1 = next) in the order the scheduler takes the queued jobs of its process count: "
        "fair share across owners, then priority, then age; null unless queued"))
    wait_reason: str | None = Field(None, description="why a queued job waits, in words (a free worker, or its "
                                    "owner's running limit); null unless queued")


class JobOut(JobSummary):
    spec: dict[str, Any]
    disk_bytes: int | None = None  # the run directory's size, measured by GET /v1/jobs/{id}
    sweep_id: str | None = None  # the sweep (POST /v1/sweeps) that made it
    # lineage, for a job continued from a checkpoint (base_model job:<id>@...): null for one trained from a model
    parent_job_id: str | None = None  # the job whose checkpoint it started from
    parent_checkpoint: str | None = None  # that checkpoint, step-N (best and final resolved when it was submitted)
    original_base_model: str | None = None  # the model the first job of the chain trained from: the KL's default
    usage: JobUsageOut | None = None  # what it used so far (GET /v1/jobs/{id}; store/usage.py)


class JobPage(BaseModel):
    """One page of ``GET /v1/jobs``, in the OpenAI list shape: pass ``last_id`` as ``after`` for the next."""

    object: str = "list"
    data: list[JobSummary]
    first_id: str | None
    last_id: str | None
    has_more: bool


class CheckpointOut(BaseModel):
    name: str
    step: int
    kind: str  # "full" or "adapter"
    bytes: int
    best: bool = False  # the best checkpoint within the job's forgetting budget (also named `best`)


class EventOut(BaseModel):
    """One line of a job's log: config, progress, eval, checkpoint, end (``GET /v1/jobs/{id}/events``)."""

    model_config = ConfigDict(from_attributes=True)
    seq: int
    step: int
    kind: str
    message: str
    data: dict[str, Any] | None
    created_at: UtcDatetime


class MetricPointOut(BaseModel):
    """One metric point: ``seq``, ``step`` and its values by name (``train/…``, ``eval/…``; null if non-finite)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": {"type": ["number", "null"]}})
    seq: int
    step: int


class JobLogOut(BaseModel):
    """A piece of a job's log: ``text`` is its bytes ``offset`` to ``next_offset`` (of ``size``); ask again with
    ``offset=next_offset`` for what follows. ``ended``: the job has ended, so once ``next_offset == size`` no more
    lines come but its worker's last one (it follows the job's end within a second)."""

    offset: int
    next_offset: int
    size: int
    text: str
    ended: bool


class TrackerOut(BaseModel):
    """A tracker's output folder in a job's run directory, downloadable as .tar.gz, and how to look at it."""

    name: Tracker
    folder: str  # its name in the run directory (and in the archive)
    bytes: int
    download: str  # the URL of its .tar.gz
    view: str  # a command that shows it once unpacked


class EstimateOut(BaseModel):
    """``GET /v1/estimate``: how long a job of that shape would run here, measured on the owner's finished jobs of
    the same base model and shape (``based_on`` of them); ``seconds`` null: no estimate yet, nothing comparable ran.
    The parts: seconds to load, per step, per evaluation and per save (medians over those jobs)."""

    seconds: float | None
    based_on: int
    evaluations: int  # the spec's: step 0, every eval_every, the last step
    saves: int
    setup_s: float | None = None
    step_s: float | None = None
    eval_s: float | None = None
    save_s: float | None = None
    message: str


class PreflightIn(BaseModel):
    """``POST /v1/estimates``: a job spec as POST /v1/jobs takes it, and the device to estimate it on."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] = Field(description="the job spec, as submitted to POST /v1/jobs")
    device: str | None = Field(None, max_length=200, description="cpu, a GPU's name (NVIDIA H100 80GB HBM3, H200, "
                               "A100, ...) or a live worker's name; null: the live worker with the most memory, "
                               "else a CPU")


class WorkerFitOut(BaseModel):
    """A live worker that advertises its memory and has the processes the job asks for: the estimate's peak there
    and whether it fits with ``MOL_ESTIMATE_MEMORY_MARGIN`` left free."""

    name: str
    device: str
    memory_bytes: int
    peak_bytes: int
    fits: bool


class PreflightOut(BaseModel):
    """``POST /v1/estimates``: the pre-flight estimate (docs/performance.md, "Pre-flight estimate") of the spec on
    ``device``: peak memory per process with its parts at the moment of the step it is reached (``phase``),
    seconds per optimizer step, per evaluation, per save and for the whole job (setup not included), where the
    rate comes from (measured or assumed), and each live worker's fit."""

    device: str
    worker: str | None
    device_memory_bytes: int | None  # null: a CPU named without a worker (the host's memory is not known here)
    fits: bool | None
    margin: float
    peak_bytes: int
    parts: dict[str, int]  # parameters, gradients, optimizer, reference, activations, loss_chunk, overhead
    phase: str
    dtype: str
    sharding: str
    nproc: int
    step_s: float
    eval_s: float
    save_s: float
    job_s: float
    flops_per_step: float
    evaluations: int
    saves: int
    rate_source: str
    workers: list[WorkerFitOut]
    message: str


class VocabulariesOut(BaseModel):
    """The words job answers use (GET /v1/vocabularies), each from the one place it is defined."""

    job_statuses: list[str] = Field(description="every status of a job, in the order a job passes them")
    active_statuses: list[str] = Field(description="statuses of a job someone may still write to")
    final_statuses: list[str] = Field(description="statuses of a job that has ended")
    event_kinds: list[str] = Field(description="every kind of a job's events (GET /v1/jobs/{id}/events)")
