"""GET /v1/usage: the calling owner's tokens and accelerator time by UTC day, their storage, and their limits with
today's use against them (store/usage.py meters the figures)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from store.db import utcnow
from store.quotas import limits_for
from store.usage import accelerator_seconds_on, days_of, storage_bytes

from ..deps import DB, Owner, Svc
from ..schemas.common import errors
from ..schemas.usage import LimitsOut, StorageOut, UsageDayOut, UsageOut
from ..services.quotas import GB

router = APIRouter(tags=["usage"], responses=errors(401, 422))
MAX_DAYS = 366  # a range of days one request may ask for
DEFAULT_DAYS = 30
From = Annotated[date | None, Query(alias="from", description="first UTC day, YYYY-MM-DD (default: 29 days before "
                                                               "`to`)")]
To = Annotated[date | None, Query(alias="to", description="last UTC day, YYYY-MM-DD (default: today)")]


def day_range(first: date | None, last: date | None, today: date) -> tuple[date, date]:
    """The range asked for, defaults filled in; a 422 naming the field when it is reversed or over MAX_DAYS."""
    last = last or today
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise HTTPException(422, f"from: {first} is after to ({last})")
    if (last - first).days + 1 > MAX_DAYS:
        raise HTTPException(422, f"from: the range {first} to {last} spans {(last - first).days + 1} days, more "
                                 f"than {MAX_DAYS}; ask for it in parts")
    return first, last


@router.get("/v1/usage", response_model=UsageOut)
def usage(owner: Owner, db: DB, svc: Svc, first: From = None, last: To = None) -> UsageOut:
    """Only the caller's own figures: each day of the range their jobs used anything."""
    today = utcnow().date()
    first, last = day_range(first, last, today)
    days = [UsageDayOut(day=day, tokens=int(tokens or 0), accelerator_seconds=float(seconds or 0),
                        accelerator_hours=float(seconds or 0) / 3600, jobs=jobs)
            for day, tokens, seconds, jobs in days_of(db, owner, first, last)]
    datasets, runs = storage_bytes(db, owner)
    limits = limits_for(svc.settings, owner)
    seconds = sum(d.accelerator_seconds for d in days)
    return UsageOut(
        owner=owner, from_day=first, to_day=last, days=days, tokens=sum(d.tokens for d in days),
        accelerator_seconds=seconds, accelerator_hours=seconds / 3600,
        storage=StorageOut(datasets_bytes=datasets, runs_bytes=runs, total_bytes=datasets + runs),
        limits=LimitsOut(gpu_hours_per_day=limits.gpu_hours_per_day, storage_gb=limits.storage_gb, today=today,
                         accelerator_hours_today=accelerator_seconds_on(db, owner, today) / 3600,
                         storage_gb_used=(datasets + runs) / GB))
