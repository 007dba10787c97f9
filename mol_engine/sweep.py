"""Sweeps: a base spec and a grid of values expanded into jobs, and the Pareto frontier of their results.

A grid maps a few spec fields (:data:`GRID_KEYS`) to lists of values; the sweep is every combination (the
cartesian product), each job the base spec with that combination, the same data and seed, and a name saying
its point. The service (``POST /v1/sweeps``) and the CLI (``mol sweep``, and ``mol replicate``'s runs) all expand
with :func:`expand_grid`.

Each job's result is a point (:func:`result_point`) of *domain gain* against *general drift*, read from its
evaluation history, and :func:`pareto_frontier` names the jobs no other job beats on both.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from pydantic import ValidationError

from .spec import JobSpec, format_validation_error

GRID_KEYS = ("ratio", "kl_weight", "lr", "method")  # the JobSpec fields a sweep may vary
DOMAIN_METRIC = "eval/domain_ppl"
DRIFT_METRIC = "eval/general_kl"


class SweepError(ValueError):
    """A grid that cannot be expanded: the message says why (an unknown key, too many jobs, a bad point)."""


class Point(TypedDict):
    """One job's result: ``gain`` and ``drift`` as defined in :func:`result_point` (None before it evaluated)."""

    id: str
    gain: float | None
    drift: float | None


def grid_size(grid: Mapping[str, list]) -> int:
    """How many jobs ``grid`` makes: the product of its lists' lengths."""
    return math.prod(len(values) for values in grid.values())


def point_label(values: Mapping[str, Any]) -> str:
    """``ratio=4:1 kl_weight=0.5``: a grid point in words, which every job's name ends with."""
    return " ".join(f"{key}={value}" for key, value in values.items())


def check_grid(grid: Mapping[str, Any], max_jobs: int | None = None) -> None:
    """SweepError unless ``grid`` maps known keys to non-empty lists of distinct values, at most ``max_jobs``
    combinations in all."""
    if not grid:
        raise SweepError(f"grid: empty; give at least one of {', '.join(GRID_KEYS)} with a list of values")
    for key, values in grid.items():
        if key not in GRID_KEYS:
            raise SweepError(f"grid: unknown key '{key}'; a sweep may vary {', '.join(GRID_KEYS)}")
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid.{key}: expected a non-empty list of values")
        if len({repr(v) for v in values}) != len(values):
            raise SweepError(f"grid.{key}: a value is repeated")
    count = grid_size(grid)
    if max_jobs is not None and count > max_jobs:
        sizes = " x ".join(str(len(v)) for v in grid.values())
        raise SweepError(f"grid: {sizes} = {count} jobs, more than the cap of {max_jobs} jobs per sweep")


def expand_grid(base: Mapping[str, Any], grid: Mapping[str, list],
                max_jobs: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """[(name, spec)] for every combination of ``grid`` over ``base``, in grid order (the last key varies fastest).

    Each spec is ``base`` with the combination's values and the name ``<base name> [<point label>]`` (the values
    as validated, ``ratio=4:1 kl_weight=0.5``), checked
    with :class:`JobSpec` and returned as its JSON dict. SweepError names an unknown key, a grid over
    ``max_jobs``, or the first point whose spec is invalid (with the field at fault).
    """
    check_grid(grid, max_jobs)
    out: list[tuple[str, dict[str, Any]]] = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination, strict=True))
        try:
            spec = JobSpec.model_validate({**base, **values})
        except ValidationError as err:
            raise SweepError(f"grid point {point_label(values)}: invalid job spec:\n"
                             f"{format_validation_error(err)}") from None
        label = point_label({key: getattr(spec, key) for key in grid})  # as validated: ' 4 : 1' reads 4:1
        spec.name = f"{spec.name} [{label}]"[:200]
        if any(name == spec.name for name, _ in out):
            raise SweepError(f"grid: the point {label} is repeated")
        out.append((spec.name, spec.model_dump(mode="json")))
    return out


def result_point(job_id: str, evaluations: Iterable[Mapping[str, Any]]) -> Point:
    """The job's point on the trade-off, from its evaluations (dicts with ``step`` and eval metrics):

    - ``gain`` = ln(base domain ppl) − ln(final domain ppl): the fall of the held-out domain cross-entropy
      (nats/token) from the evaluation at step 0 (the untouched base) to the last evaluation after it;
      positive is better.
    - ``drift`` = ``eval/general_kl`` at that same last evaluation: the KL to the base on held-out general
      text (nats/token); lower is better.

    Either is None when the figures are missing (no step-0 or later evaluation yet, a method without general
    text, a non-finite value).
    """
    evals = sorted((e for e in evaluations if _finite(e.get(DOMAIN_METRIC))), key=lambda e: e["step"])
    base = next((e for e in evals if e["step"] == 0), None)
    final = next((e for e in reversed(evals) if e["step"] > 0), None)
    if base is None or final is None:
        return {"id": job_id, "gain": None, "drift": None}
    drift = final.get(DRIFT_METRIC)
    return {"id": job_id, "gain": math.log(base[DOMAIN_METRIC]) - math.log(final[DOMAIN_METRIC]),
            "drift": drift if _finite(drift) else None}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` on both axes (gain ≥, drift ≤) and strictly better on one."""
    return (a["gain"] >= b["gain"] and a["drift"] <= b["drift"]
            and (a["gain"] > b["gain"] or a["drift"] < b["drift"]))


def pareto_frontier(points: Iterable[Point]) -> list[str]:
    """The ids of the points no other point dominates (maximize ``gain``, minimize ``drift``).

    Points without a finite gain and drift are not candidates. Ties: points with equal gain and equal drift do
    not dominate each other, so all of them are on the frontier when one is; a point equal to another on one
    axis and worse on the other is dominated. The ids come ordered by drift, lowest first (then gain, highest
    first, then id), the order a line through the frontier is drawn in.
    """
    candidates = [p for p in points if _finite(p["gain"]) and _finite(p["drift"])]
    front = [p for p in candidates if not any(dominates(q, p) for q in candidates)]
    return [p["id"] for p in sorted(front, key=lambda p: (p["drift"], -p["gain"], p["id"]))]


def ranked(points: Iterable[Point]) -> list[dict[str, Any]]:
    """Each point with ``on_frontier``, best gain first (points without a gain last): a sweep's table."""
    points = list(points)
    front = set(pareto_frontier(points))
    rows = [{**p, "on_frontier": p["id"] in front} for p in points]
    return sorted(rows, key=lambda r: (r["gain"] is None, -(r["gain"] or 0.0), r["id"]))

