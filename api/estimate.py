"""How long a job would run on this server, measured on the owner's finished jobs of the same base model and shape.

A job's timeline: ``started_at`` (a worker took it), its ``config`` event (model and data loaded: the setup),
then steps, evaluations and saves (each ``eval`` and ``checkpoint`` event carries its own ``seconds``), then
``finished_at``. Each comparable job gives seconds of setup, per step, per evaluation and per save; the median of
each over the newest comparable jobs, scaled by the new spec's steps and its evaluation and save cadence, is the
estimate. A job is comparable when it ran the same step: same base model, method, fine-tuning, reference, block
length, batch, accumulation, processes, precision and checkpointing. Nothing comparable: no estimate, rather
than a guess from another model or shape.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from mol_engine.demo import format_duration
from mol_engine.spec import JobSpec
from store.db import Job, JobEvent
from store.leases import as_utc

# the spec fields that decide what one step costs: a finished job is comparable when it agrees on all of them
SHAPE = ("base_model", "method", "finetune", "reference", "seq_len", "batch_size", "grad_accum", "nproc",
         "precision", "gradient_checkpointing")
# the fields that scale the estimate: how many steps, evaluations and saves
CADENCE = ("max_steps", "eval_every", "save_every")
# GET /v1/estimate's query: these fields of JobSpec, with its types, bounds, defaults and descriptions
EstimateQuery = create_model("EstimateQuery", __config__=ConfigDict(extra="forbid"),
                             **{name: (JobSpec.model_fields[name].annotation, JobSpec.model_fields[name])
                                for name in SHAPE + CADENCE})


@dataclass(frozen=True)
class Timing:
    """Seconds a job spent loading (model, data, reference), per training step, per evaluation and per save."""

    setup_s: float
    step_s: float
    eval_s: float
    save_s: float


def evaluations(max_steps: int, eval_every: int) -> int:
    """How many evaluations a run of ``max_steps`` makes: step 0, every ``eval_every``, and the last step."""
    return 1 + max_steps // eval_every + (max_steps % eval_every != 0)


def saves(max_steps: int, save_every: int) -> int:
    """How many checkpoints a run of ``max_steps`` writes: every ``save_every`` and the last step."""
    return max_steps // save_every + (max_steps % save_every != 0)


def estimate_seconds(timing: Timing, max_steps: int, eval_every: int, save_every: int) -> float:
    """The seconds a run of ``max_steps`` (with its evaluations and saves) takes at ``timing``, setup included."""
    return (timing.setup_s + max_steps * timing.step_s + evaluations(max_steps, eval_every) * timing.eval_s
            + saves(max_steps, save_every) * timing.save_s)


def job_timing(started_at: datetime, config_at: datetime, finished_at: datetime, steps: int,
               eval_seconds: Sequence[float], save_seconds: Sequence[float]) -> Timing | None:
    """One finished job's :class:`Timing`: the time to its ``config`` event is setup; the rest, less its
    evaluations and saves, divided by its steps, is the step time. None when it ran no step or made no save."""
    if steps <= 0 or not save_seconds:
        return None
    training = (finished_at - config_at).total_seconds() - sum(eval_seconds) - sum(save_seconds)
    return Timing(setup_s=max((config_at - started_at).total_seconds(), 0.0), step_s=max(training, 0.0) / steps,
                  eval_s=statistics.fmean(eval_seconds) if eval_seconds else 0.0,
                  save_s=statistics.fmean(save_seconds))


def median_timing(timings: Sequence[Timing]) -> Timing:
    """Each part's median over ``timings`` (one slow or fast run moves it little)."""
    return Timing(*(statistics.median(getattr(t, part) for t in timings)
                    for part in ("setup_s", "step_s", "eval_s", "save_s")))


def shape_of(spec: dict[str, Any]) -> tuple:
    """A stored spec's :data:`SHAPE` values (JobSpec's default for a field it lacks)."""
    return tuple(spec.get(name, JobSpec.model_fields[name].default) for name in SHAPE)


def _timing_from_events(job: Job, events: Iterable[JobEvent]) -> Timing | None:
    """A finished job's timing from its events; None for one that resumed or restarted (its wall time holds a
    gap) or whose evaluations and saves carry no seconds (run before they were timed)."""
    configs, evals, saves_ = [], [], []
    for event in events:
        if event.kind in ("resumed", "requeued"):
            return None
        seconds = (event.data or {}).get("seconds")
        if event.kind == "config":
            configs.append(as_utc(event.created_at))
        elif event.kind in ("eval", "checkpoint"):
            if not isinstance(seconds, int | float):
                return None
            (evals if event.kind == "eval" else saves_).append(float(seconds))
    if len(configs) != 1:
        return None
    return job_timing(as_utc(job.started_at), configs[0], as_utc(job.finished_at), job.step, evals, saves_)


def measured_timings(sessions: sessionmaker, owner: str, shape: tuple, scan: int, keep: int) -> list[Timing]:
    """The timings of the owner's newest (at most ``keep``) succeeded jobs of ``shape``, looking at the newest
    ``scan`` succeeded jobs only."""
    with sessions() as db:
        finished = db.scalars(select(Job).where(Job.owner == owner, Job.status == "succeeded",
                                                Job.started_at.is_not(None), Job.finished_at.is_not(None))
                              .order_by(Job.finished_at.desc()).limit(scan)).all()
        alike = [job for job in finished if shape_of(job.spec or {}) == shape]
        if not alike:
            return []
        by_job: dict[str, list[JobEvent]] = defaultdict(list)
        kinds = ("config", "resumed", "requeued", "eval", "checkpoint")
        for event in db.scalars(select(JobEvent).where(JobEvent.job_id.in_([j.id for j in alike]),
                                                       JobEvent.kind.in_(kinds)).order_by(JobEvent.seq)):
            by_job[event.job_id].append(event)
        timings = (_timing_from_events(job, by_job[job.id]) for job in alike)
        return [t for t in timings if t is not None][:keep]


def _plural(n: int, word: str) -> str:
    """``1 save``, ``2 saves``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def estimate(sessions: sessionmaker, owner: str, query: BaseModel, scan: int, keep: int) -> dict[str, Any]:
    """GET /v1/estimate's answer for ``query`` (an :data:`EstimateQuery`): the seconds, the parts they come
    from and a sentence; ``seconds`` None when nothing comparable ran."""
    values = query.model_dump()
    shape = tuple(values[name] for name in SHAPE)
    timings = measured_timings(sessions, owner, shape, scan, keep)
    steps, every, save_every = (values[name] for name in CADENCE)
    counts = {"evaluations": evaluations(steps, every), "saves": saves(steps, save_every)}
    what = (f"{values['base_model']} with this shape ({values['method']}, {values['finetune']}, seq_len "
            f"{values['seq_len']}, batch_size {values['batch_size']} x grad_accum {values['grad_accum']}, nproc "
            f"{values['nproc']})")
    if not timings:
        return {"seconds": None, "based_on": 0, **counts,
                "message": f"no estimate yet: no finished job of {what} has run here"}
    t = median_timing(timings)
    seconds = estimate_seconds(t, steps, every, save_every)
    return {"seconds": seconds, "based_on": len(timings), **counts, "setup_s": t.setup_s, "step_s": t.step_s,
            "eval_s": t.eval_s, "save_s": t.save_s,
            "message": f"about {format_duration(seconds)}: {format_duration(t.setup_s)} to load, "
                       f"{_plural(steps, 'step')} x {t.step_s:.3g} s, {_plural(counts['evaluations'], 'evaluation')} x "
                       f"{t.eval_s:.3g} s, {_plural(counts['saves'], 'save')} x {t.save_s:.3g} s (from "
                       f"{_plural(len(timings), 'finished job')} of {what})"}
