"""The service's one settings object, read from ``MOL_*`` environment variables.

With nothing set, everything lives under ``MOL_HOME`` (default ``./.mol``): SQLite, the filesystem broker,
datasets and runs. ``MOL_DATABASE_URL`` and ``MOL_BROKER_URL`` switch to PostgreSQL and Redis.
"""

from __future__ import annotations

import re
from functools import cached_property
from ipaddress import ip_network
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mol_engine.run_dir import RunDir


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOL_", extra="ignore")

    home: Path = Path(".mol")
    database_url: str | None = None
    broker_url: str | None = None
    models_dir: Path | None = Field(None, description="each sub-directory with a config.json is a base model")
    demo_model: bool = Field(True, description="offer the in-tree demo model as 'demo'")
    demo_pretrain_steps: int | None = Field(None, ge=1, description="demo base pre-training steps (None: default)")
    demo_cache: Path | None = Field(None, description=(
        "where demo builds are shared by every MOL_HOME of the user (None: $XDG_CACHE_HOME/mol-studio, else "
        "~/.cache/mol-studio)"))
    tokens: str = Field("", description="owner:token pairs, comma separated, accepted besides stored tokens")
    max_upload_mb: float = Field(1024, gt=0, description=(
        "largest dataset file (POST /v1/datasets, or the declared size of an upload in parts); the multipart "
        "request around it may hold a little more (its headers and text fields)"))
    max_json_body_kb: float = Field(1024, gt=0, description=(
        "largest body of any other /v1 request (JSON: job specs, sweeps, completions...); a larger one is a 413, "
        "refused from its Content-Length or as soon as that many bytes arrived"))
    upload_expiry_h: float = Field(24, gt=0, description="an upload in parts not completed by then is dropped")
    max_bad_lines: int = Field(20, ge=1, description=(
        "bad lines of an upload its 422 lists (each with its number and what is wrong); the rest are counted"))
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed with credentials; no '*'")
    job_attempts: int = Field(3, ge=1, description="attempts before a job that keeps crashing is failed")
    heartbeat_s: float = Field(10, gt=0, description=(
        "how often a running job's runner renews its lease; also how often the API's sweeper looks for dead ones"))
    lease_timeout_s: float = Field(120, gt=0, description="a running job without heartbeat this long is stale")
    scheduler_retry_s: float = Field(5, gt=0, le=300, description=(
        "how long a worker waits before taking another task after a token found only jobs of owners at their "
        "running limit (the token goes back to the queue)"))
    cancel_grace_s: float = Field(10, gt=0, description=(
        "how long a cancelled run may take to stop by itself before its process group is killed"))
    stream_poll_s: float = Field(0.5, gt=0, description=(
        "how often a watched job's shared tail reads new rows (one read per job, whatever its streams)"))
    stream_keepalive_s: float = Field(15, gt=0, description=(
        "the longest an open SSE stream stays silent: a keep-alive comment is sent after it"))
    stream_db_outage_s: float = Field(30, gt=0, description=(
        "how long a live SSE stream retries (with backoff) a database it cannot reach before it ends with an "
        "`error` event, for the client to reconnect with Last-Event-ID"))
    token_recheck_s: float = Field(15, gt=0, description=(
        "how often an open SSE stream or download checks that its token was not revoked (`mol token revoke`); a "
        "revoked stream ends with an `error` event, a revoked download is cut"))
    worker_capacity: int = Field(1, ge=1, description=(
        "processes (GPUs) this worker can give one job; `mol worker --gpus/--procs` sets it"))
    side_tasks_per_owner: int = Field(4, ge=1, description=(
        "interpolations and task evaluations one owner may have queued or running at once (another is a 429), "
        "so one owner's side tasks cannot fill the workers' queue"))
    side_task_expiry_h: float = Field(24, gt=0, description=(
        "a side task still queued or running after this long is taken for lost (its message gone with a broker "
        "wipe): it no longer counts against its owner's cap, and the same request queues it again"))
    max_nproc: int = Field(1, ge=1, description=(
        "largest nproc accepted at submit even when no live worker is that large (workers started on demand)"))
    max_sweep_jobs: int = Field(32, ge=1, description="the most jobs one sweep (POST /v1/sweeps) may make: the "
                                "product of its grid's list lengths")
    job_log_chunk_kb: float = Field(256, gt=0, description=(
        "the most of a job's log one GET /v1/jobs/{id}/log answer carries (a client reads on from next_offset)"))
    job_log_tail_kb: float = Field(64, gt=0, description=(
        "how much of a job's log's end GET /v1/jobs/{id}/log returns without an offset (what a page shows first)"))
    workers_listed_h: float = Field(24, gt=0, description=(
        "GET /v1/workers lists the workers seen within this many hours (older ones are gone for good)"))
    db_pool_size: int = Field(20, ge=1, description="pooled database connections of one API process")
    db_max_overflow: int = Field(20, ge=0, description="connections opened past the pool under load")
    db_pool_timeout_s: float = Field(30, gt=0, description="how long a request waits for a free connection")
    resident_models: int = Field(2, ge=1, description="models the completions routes keep loaded (LRU)")
    generation_threads: int = Field(3, ge=1, description="threads that load models and generate (at most this "
                                    "many completions run at once; the others wait their turn)")
    generations_per_owner: int = Field(2, ge=1, description=(
        "completions one owner may have running or waiting at once (the playground runs 2); the next is refused "
        "with 429. Kept below MOL_GENERATION_THREADS, no owner can take every thread and delay another's"))
    max_completion_tokens: int = Field(512, ge=1, description="the largest max_tokens a completion may ask for")
    max_prompt_chars: int = Field(500_000, ge=1, description=(
        "the longest prompt (a chat's messages: their roles and contents together) a completion may send, in "
        "characters; refused before the model loads (tokenizing 1M characters takes ~170 MB and seconds)"))
    max_stop_chars: int = Field(256, ge=1, description=(
        "the longest stop string a completion may give (each new token's text is matched against every start of "
        "each one)"))
    prompt_chars_per_token: int = Field(32, ge=1, description=(
        "a prompt longer than the model's context times this many characters cannot fit it and is refused "
        "before it is tokenized (generous: text averages about 4 characters a token)"))
    max_microbatch_tokens: int = Field(131_072, ge=8, description=(
        "the most tokens one micro-batch of a submitted job may hold (batch_size x seq_len, per process): the "
        "activations of a larger one fit on no worker; grad_accum reaches larger batches"))
    webhook_retry_s: list[float] = Field([1, 5, 30, 120, 600], max_length=20, description=(
        "webhooks: the wait before each retry of a delivery that failed (no 2xx in time); a delivery is tried "
        "once, then once more per entry, then marked failed"))
    webhook_timeout_s: float = Field(10, gt=0, description="webhooks: how long one attempt waits for a 2xx answer")
    webhook_poll_s: float = Field(1, gt=0, description="webhooks: how often the API's dispatcher looks for due "
                                  "deliveries")
    webhook_concurrency_per_owner: int = Field(4, ge=1, description=(
        "webhooks: attempts of one owner's deliveries a dispatcher (API process) runs at once, so that endpoints "
        "that never answer hold up no other owner"))
    webhook_concurrency_per_endpoint: int = Field(1, ge=1, description=(
        "webhooks: attempts at one endpoint a dispatcher (API process) runs at once"))
    max_webhooks_per_owner: int = Field(20, ge=1, description="webhooks: the most endpoints one owner may register")
    webhook_failures_before_cooldown: int = Field(5, ge=1, description=(
        "webhooks: failed attempts in a row (any of its deliveries) after which an endpoint cools down: its "
        "deliveries wait MOL_WEBHOOK_COOLDOWN_S, doubled by each further failure"))
    webhook_cooldown_s: float = Field(60, gt=0, description="webhooks: the first cool-down of a failing endpoint")
    webhook_cooldown_max_s: float = Field(3600, gt=0, description="webhooks: the longest cool-down of an endpoint")
    webhook_allow_hosts: list[str] = Field(default_factory=list, description=(
        "webhooks: internal receivers allowed besides public addresses: host names (any address they resolve to, "
        "but the cloud metadata service), addresses or networks, e.g. [\"hooks.internal\", \"10.1.0.0/16\"]; "
        "loopback, private, link-local, multicast and reserved addresses are refused otherwise"))
    owner_running_jobs: int = Field(2, ge=1, description=(
        "quotas: an owner's jobs that may run at once; the next waits in the queue, its reason on the job "
        "(per-owner overrides: MOL_OWNER_LIMITS)"))
    owner_queued_jobs: int = Field(100, ge=1, description=(
        "quotas: an owner's jobs that may wait in the queue at once; one more is a 429 naming the limit"))
    owner_gpu_hours_per_day: float = Field(24, gt=0, description=(
        "quotas: accelerator-hours (processes x hours) an owner's jobs may use per UTC day; a submit once they "
        "are used is a 429 naming the limit"))
    owner_storage_gb: float = Field(200, gt=0, description=(
        "quotas: what an owner's datasets and runs (checkpoints) may hold on disk; a submit or upload past it "
        "is a 429 naming the limit"))
    owner_max_priority: int = Field(10, ge=0, description=(
        "quotas: the highest `priority` an owner's job may ask for (0 = default); a higher one is a 422"))
    owner_limits: dict[str, dict[str, float]] = Field(default_factory=dict, description=(
        "quotas: per-owner overrides of the five limits above, as JSON, e.g. "
        "{\"alice\": {\"running_jobs\": 4, \"gpu_hours_per_day\": 100}}"))
    estimate_jobs: int = Field(5, ge=1, description=(
        "GET /v1/estimate: the newest finished jobs of the same base model and shape whose timings (medians) "
        "make an estimate"))
    estimate_scan_jobs: int = Field(200, ge=1, description=(
        "GET /v1/estimate: the owner's newest succeeded jobs it reads (with their specs) to find comparable ones"))
    estimate_memory_margin: float = Field(0.1, ge=0, lt=1, description=(
        "POST /v1/estimates and the submit check: the fraction of a worker's memory the pre-flight estimate of a "
        "job's peak must leave free to count as fitting it (the estimate's error, the CUDA context, fragmentation)"))

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_origin(cls, origins: list[str]) -> list[str]:
        """Refuses '*': the API allows credentials, and with them a wildcard would let any site act as the user."""
        if "*" in origins:
            raise ValueError("MOL_CORS_ORIGINS may not contain '*' (requests carry credentials): list each "
                             "origin, e.g. [\"https://studio.example.com\"]")
        return origins

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _allow_entries(cls, entries: list[str]) -> list[str]:
        """Refuses an entry that is neither a network, an address nor a bare host name (a URL, a host:port)."""
        for entry in entries:
            try:
                ip_network(entry.strip(), strict=False)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9_.-]+", entry.strip()):
                    raise ValueError(f"MOL_WEBHOOK_ALLOW_HOSTS: '{entry}' is neither a host name, an address nor a "
                                     "network (e.g. hooks.internal, 10.1.2.3, 10.1.0.0/16)") from None
        return entries

    @field_validator("owner_limits")
    @classmethod
    def _known_limits(cls, overrides: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Refuses an override of a limit that does not exist (a typo would otherwise be ignored in silence)."""
        from .quotas import LIMIT_NAMES

        for owner, limits in overrides.items():
            unknown = sorted(set(limits) - set(LIMIT_NAMES))
            if unknown:
                raise ValueError(f"MOL_OWNER_LIMITS: owner '{owner}': unknown limit {', '.join(unknown)} (known: "
                                 f"{', '.join(LIMIT_NAMES)})")
            negative = sorted(name for name, value in limits.items() if value < 0)
            if negative:
                raise ValueError(f"MOL_OWNER_LIMITS: owner '{owner}': {', '.join(negative)} must be >= 0")
        return overrides

    @cached_property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'mol.db').resolve()}"

    @cached_property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.broker.startswith("filesystem")

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def local_token_file(self) -> Path:
        """Where ``mol up`` keeps the token of the owner ``local`` (mode 0600), reused at each start."""
        return self.home / "local-token"

    @property
    def worker_log_file(self) -> Path:
        """Where the worker that ``mol up`` runs writes its output (the one before: ``worker.log.1``)."""
        return self.home / "worker.log"

    def run_dir(self, job_id: str) -> RunDir:
        """The job's run directory (``runs/<job id>``): what its training writes, and its log."""
        return RunDir(self.runs_dir / job_id)

    def job_log_file(self, job_id: str) -> Path:
        """The job's log: its runner's output and its worker's lines about it, every attempt appended."""
        return self.run_dir(job_id).path / "job.log"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_json_body_bytes(self) -> int:
        return int(self.max_json_body_kb * 2**10)

    def static_tokens(self) -> dict[str, str]:
        """token -> owner from ``MOL_TOKENS`` ("alice:tok1,bob:tok2")."""
        pairs = (item.split(":", 1) for item in self.tokens.split(",") if ":" in item)
        return {token.strip(): owner.strip() for owner, token in pairs if token.strip() and owner.strip()}

    def pool_options(self) -> dict[str, float]:
        """make_engine's pool arguments (store/db.py)."""
        return {"pool_size": self.db_pool_size, "max_overflow": self.db_max_overflow,
                "pool_timeout_s": self.db_pool_timeout_s}

    @property
    def exports_dir(self) -> Path:
        """Scratch space of merged LoRA downloads, each removed when its response ends."""
        return self.home / "exports"

    @property
    def serving_dir(self) -> Path:
        """FSDP checkpoints gathered into Hugging Face directories for the completions routes, kept for reuse."""
        return self.home / "serving"
