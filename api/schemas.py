"""Request and response bodies of the REST API (JobSpec, the job request, lives in mol_engine.spec).

Also what the OpenAPI document says of the bodies that routes read themselves (to word their own errors or to
stream them to disk), and the one error shape every route answers with.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

from mol_engine.spec import JobSpec, Tracker
from mol_engine.sweep import GRID_KEYS
from store.jobs import JobStatus
from store.webhook_outbox import WebhookEventType

from .upload_parts import MAX_PARTS
from .validation import PURPOSES


def utc_iso(moment: datetime) -> str:
    """``moment`` as UTC ISO 8601 ending in ``Z``; a naive datetime (SQLite gives those) is taken to be UTC."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


# Every timestamp the API sends: one serializer, whichever database the row came from
UtcDatetime = Annotated[datetime, PlainSerializer(utc_iso, return_type=str, when_used="json"),
                        WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-29T18:12:36Z"]},
                                       mode="serialization")]


class ErrorOut(BaseModel):
    """Every error answer (4xx, 5xx): what is wrong, naming the field or the line; several problems one per line."""

    detail: str = Field(examples=["domain_data: Field required"])


ERROR_MEANINGS = {
    400: "the body could not be read: not JSON, or broken off before it was whole",
    401: "missing or invalid token (send `Authorization: Bearer <token>`)",
    403: "a write authenticated by the session cookie alone",
    404: "not found, or not yours",
    409: "conflicts with the object's current state",
    413: "larger than the size limit",
    422: "invalid input: each line names the field or the line of the file at fault",
    429: "past a per-owner limit, which the message names; `Retry-After`, where given, says when to try again",
    503: "the job queue is unavailable; nothing was created",
    507: "the server's disk is full",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that can answer ``codes``: each one an :class:`ErrorOut`."""
    return {code: {"model": ErrorOut, "description": ERROR_MEANINGS[code]} for code in codes}


# Bodies that routes validate themselves: the document takes their schemas from the models all the same
SELF_VALIDATED_BODIES: tuple[type[BaseModel], ...] = (JobSpec,)


def component_schemas(models: tuple[type[BaseModel], ...] = SELF_VALIDATED_BODIES) -> dict[str, dict]:
    """The OpenAPI components of ``models`` and of the models they nest."""
    found: dict[str, dict] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found |= schema.pop("$defs", {})
        found[model.__name__] = schema
    return found


def json_body(model: type[BaseModel]) -> dict:
    """A route's ``openapi_extra`` when it reads ``model`` from a JSON body that it validates itself."""
    assert model in SELF_VALIDATED_BODIES, f"add {model.__name__} to SELF_VALIDATED_BODIES"
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# POST /v1/datasets streams the form to disk itself: this is the form it reads
DATASET_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "JSONL with `text` per line, .txt or Parquet; for `eval`, JSONL `question`, `answer`"},
        "purpose": {"type": "string", "enum": list(PURPOSES)}}}}}}}
# PUT /v1/uploads/{id}/parts/{index}: the part's bytes as they are
RAW_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
# Streamed answers: the media types beside a route's JSON one
SSE = {"text/event-stream": {"schema": {"type": "string", "description": "SSE messages (`event`, `id`, `data`)"}}}
TARBALL = {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}


class TokenStoreOut(BaseModel):
    """One tokenization of a dataset: made by the first job that used it with this tokenizer."""

    tokenizer: str
    tokens: int
    documents: int
    dtype: str
    vocab_size: int
    bytes: int


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    purpose: str
    filename: str
    bytes: int
    documents: int
    approx_tokens: int
    sha256: str
    created_at: UtcDatetime
    token_stores: list[TokenStoreOut] = []


class UploadIn(BaseModel):
    filename: str = Field(min_length=1, max_length=255)
    purpose: str
    bytes: int = Field(ge=0, description="the whole file's size; the parts must add up to it")
    mime_type: str | None = Field(None, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")  # no NUL: PostgreSQL refuses it


class CompleteIn(BaseModel):
    part_count: int | None = Field(None, ge=1, le=MAX_PARTS,
                                   description="parts 0..part_count-1 (default: as many as received)")
    sha256: str | None = Field(None, pattern="^[0-9a-fA-F]{64}$", description="expected hash of the whole file")


class PartOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    index: int
    bytes: int
    sha256: str


class UploadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    status: str
    filename: str
    purpose: str
    bytes: int
    mime_type: str | None
    received_bytes: int
    parts: list[PartOut]
    dataset_id: str | None
    created_at: UtcDatetime
    expires_at: UtcDatetime


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
    attempt: int
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    stop_reason: str | None = None  # why a succeeded job ended before max_steps: "budget" (its forgetting budget)


class JobOut(JobSummary):
    spec: dict[str, Any]
    disk_bytes: int | None = None  # the run directory's size, measured by GET /v1/jobs/{id}
    sweep_id: str | None = None  # the sweep (POST /v1/sweeps) that made it


class JobPage(BaseModel):
    """One page of ``GET /v1/jobs``, in the OpenAI list shape: pass ``last_id`` as ``after`` for the next."""

    object: str = "list"
    data: list[JobSummary]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ModelOut(BaseModel):
    """OpenAI's model object (``id``, ``object``, ``created``, ``owned_by``) with the model's type and kind."""

    id: str  # the name a job spec's base_model takes; the server's path stays private
    object: Literal["model"] = "model"
    created: int = 0  # Unix seconds: when the base model's files, or the checkpoint, were written
    owned_by: str = "mol-studio"  # a base model: the server's; a checkpoint: its job's owner
    model_type: str | None = None
    kind: str = "base"  # or "checkpoint" (``<job_id>:step-N``, listed with ?include=checkpoints): completions only
    job_name: str | None = None  # a checkpoint's: the name of its job, which people know it by
    checkpoint: str | None = None  # a checkpoint's name in its job: ``best`` or ``step-N``
    step: int | None = None  # a checkpoint's step (``best``'s: the step it names)


class ModelList(BaseModel):
    """``GET /v1/models`` in OpenAI's list shape, which ``OpenAI(...).models.list()`` reads."""

    object: Literal["list"] = "list"
    data: list[ModelOut]


class DemoOut(BaseModel):
    """Where the demo model stands; ``eta_s`` while it pretrains (from its pace so far)."""

    state: str  # ready, building, failed, absent (not built and no build running), off (MOL_DEMO_MODEL=false)
    phase: str | None = None  # while building: writing the corpora, training the tokenizer, pretraining, saving
    step: int = 0
    total: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    message: str


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


class WorkerOut(BaseModel):
    name: str
    last_seen: UtcDatetime


class HealthOut(BaseModel):
    """``status`` is ``degraded`` when the database or the broker fails, or jobs wait with no worker alive. The
    other fields only for a request with a valid token."""

    model_config = ConfigDict(extra="allow")
    status: str
    reasons: list[str] = []
    database: str | None = None
    broker: str | None = None
    workers: list[WorkerOut] | str | None = None  # a string says why the workers could not be read
    jobs_waiting: int | None = None


class SessionOut(BaseModel):
    owner: str


_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\\ud800" escapes make these; UTF-8 cannot encode them
MIN_TEMPERATURE = 0.01  # above 0 and below it, logits / temperature overflow: the sampler has nothing to draw from


def utf8_text(text: str) -> str:
    """``text`` when it encodes as UTF-8; ValueError at a lone surrogate (what a tokenizer and a JSON answer of it
    would fail on)."""
    found = _SURROGATE.search(text)
    if found:
        raise ValueError(f"not valid Unicode: a lone surrogate (U+{ord(found.group()):04X}) at character "
                         f"{found.start()}")
    return text


Utf8Str = Annotated[str, AfterValidator(utf8_text)]


class CompletionIn(BaseModel):
    """``POST /v1/completions``, as OpenAI's: ``model`` is a base model id or a checkpoint id (``job_…:step-N``)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI's other fields (user, logit_bias…) are accepted and unused
    model: Utf8Str
    prompt: str | list[str] = Field(description="one prompt, not empty (a list holding one is accepted too)")
    max_tokens: int = Field(16, ge=1, description="at most MOL_MAX_COMPLETION_TOKENS")
    temperature: float = Field(1.0, ge=0, le=2, description=f"0: greedy; else at least {MIN_TEMPERATURE}")
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="up to 4 strings that end the completion (not included in it)")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="a 64-bit integer")
    n: int = Field(1, ge=1, le=1, description="one completion per request")
    stream: bool = False

    @field_validator("prompt")
    @classmethod
    def _usable_prompts(cls, prompt: str | list[str] | None) -> str | list[str] | None:
        """The prompt(s), each not empty and valid Unicode (None passes: a chat has messages instead)."""
        for text in [prompt] if isinstance(prompt, str) else prompt or []:
            if not text:
                raise ValueError("empty: give at least one character to complete")
            utf8_text(text)
        return prompt

    @field_validator("stop")
    @classmethod
    def _usable_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        for text in [stop] if isinstance(stop, str) else stop or []:
            utf8_text(text)
        return stop

    @field_validator("temperature")
    @classmethod
    def _samplable_temperature(cls, temperature: float) -> float:
        if 0 < temperature < MIN_TEMPERATURE:
            raise ValueError(f"{temperature} is too small to sample with: 0 (greedy) or {MIN_TEMPERATURE} to 2")
        return temperature

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatMessage(BaseModel):
    role: Utf8Str
    content: Utf8Str


class ChatCompletionIn(CompletionIn):
    """``POST /v1/chat/completions``: ``messages`` instead of ``prompt``, for models whose tokenizer has a chat
    template."""

    prompt: None = Field(None, exclude=True)
    messages: list[ChatMessage] = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None  # stop, length; null in the chunks before the last


class CompletionOut(BaseModel):
    """OpenAI's ``text_completion`` (and, one per SSE ``data:`` line, its chunks with ``usage`` null)."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None


class ChatCompletionOut(BaseModel):
    """OpenAI's ``chat.completion``; streamed as ``chat.completion.chunk`` with ``delta`` for ``message``."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class WebhookIn(BaseModel):
    """A webhook endpoint to create: an http(s) URL and the event types it wants (none: all)."""

    model_config = ConfigDict(extra="forbid")
    url: HttpUrl = Field(description="http or https URL that receives signed POSTs",
                         examples=["https://ci.example.com/hooks/mol"])
    events: list[WebhookEventType] | None = Field(None, max_length=10, description="event types; null: all")


class WebhookOut(BaseModel):
    """A webhook endpoint (its secret is shown only when it is created)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    url: str
    events: list[str]
    created_at: UtcDatetime


class WebhookCreated(WebhookOut):
    """The new endpoint with its signing secret (``whsec_…``): shown this once, keep it to verify deliveries."""

    secret: str


class WebhookAttemptOut(BaseModel):
    """One attempt, logged coarsely: ``outcome`` is delivered, http_error, timeout, connection_failed or
    no_public_address (null on attempts logged before it was kept); ``error`` says the same in words."""

    attempt: int
    at: str
    outcome: str | None = None
    status_code: int | None
    error: str | None
    duration_ms: int | None


class WebhookDeliveryOut(BaseModel):
    """One event sent (or still to send) to an endpoint, with every attempt; ``id`` is its ``webhook-id``."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    event_type: str
    job_id: str | None
    status: str  # pending, succeeded, failed
    attempts: int
    attempts_log: list[WebhookAttemptOut]
    next_attempt_at: UtcDatetime | None = Field(validation_alias="due_at")  # null once it ended
    created_at: UtcDatetime
    payload: dict[str, Any]


MAX_GRID_VALUES = 256  # of one grid key; MOL_MAX_SWEEP_JOBS caps the product
MAX_GRID_TEXT = 64  # characters of one grid value given as text ("4:1", "mol")
GridValue = Annotated[str, Field(max_length=MAX_GRID_TEXT)] | int | float


class SweepIn(BaseModel):
    """A sweep: the base job spec (as POST /v1/jobs takes it) and a grid of values to vary; one job per point."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=150, description="default: the base spec's name")
    base: dict[str, Any] = Field(description="a job spec (JobSpec), shared by every job of the sweep")
    grid: dict[str, Annotated[list[GridValue], Field(max_length=MAX_GRID_VALUES)]] = Field(
        max_length=len(GRID_KEYS), description="spec field -> values: ratio, kl_weight, lr and method may vary",
        examples=[{"ratio": ["4:1", "1:1", "1:2"], "kl_weight": [0.5, 1]}])


class SweepJobOut(BaseModel):
    """One job of a sweep: its grid point, state and place on the trade-off (mol_engine/sweep.py result_point)."""

    id: str
    name: str
    status: str
    step: int
    max_steps: int
    values: dict[str, Any]  # its grid point
    gain: float | None  # ln(base domain ppl / final domain ppl); null before it has evaluated after step 0
    drift: float | None  # KL to the base on held-out general text at that final evaluation (nats/token)
    on_frontier: bool


class SweepSummary(BaseModel):
    """A sweep as lists show it: the number of its jobs in each state."""

    id: str
    name: str
    grid: dict[str, list[Any]]
    created_at: UtcDatetime
    jobs: int
    statuses: dict[str, int]


class SweepOut(SweepSummary):
    """A sweep with its jobs (best domain gain first) and its Pareto frontier (ids, lowest drift first)."""

    base_spec: dict[str, Any]
    data: list[SweepJobOut]
    frontier: list[str]


class SweepList(BaseModel):
    object: str = "list"
    data: list[SweepSummary]
    has_more: bool




class PreviewDocument(BaseModel):
    text: str  # cut to the first few KB; for eval files "question\n\nanswer"
    chars: int  # the whole document's length: more than len(text) when it was cut


class DatasetPreview(BaseModel):
    """``GET /v1/datasets/{id}/preview``: the dataset's stats and its first documents, in file order."""

    dataset: DatasetOut
    documents: list[PreviewDocument]


class WorkerStatusOut(BaseModel):
    """A worker as GET /v1/workers shows it: alive when its heartbeat is within ``MOL_LEASE_TIMEOUT_S``. The job
    it runs is named only to that job's owner; to others it is ``busy``."""

    name: str  # host:pid
    alive: bool
    device: str | None  # "cpu (8 cores)", "cuda: 2 x NVIDIA H100 (GPUs 0,1)"; null until its first heartbeat says
    capacity: int  # processes (GPUs) it gives one job
    last_seen: UtcDatetime
    busy: bool
    job_id: str | None
    job_name: str | None


class WorkerList(BaseModel):
    object: str = "list"
    data: list[WorkerStatusOut]  # alive first, then by last heartbeat, newest first
    alive_within_s: float  # MOL_LEASE_TIMEOUT_S


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


class SweepBoundsOut(BaseModel):
    """What a sweep's grid may hold on this server (GET /v1/sweeps/bounds): the grid editor's limits."""

    keys: list[str]  # the spec fields a grid may vary
    max_values: int  # values of one key
    max_jobs: int  # MOL_MAX_SWEEP_JOBS: the product of the lists' lengths


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
