"""The usage quotas (store/quotas.py's ``gpu_hours_per_day`` and ``storage_gb``) checked where work or bytes
arrive: a submit (POST /v1/jobs, a sweep's jobs) and an upload. Past a limit: a 429 naming it.

An owner whose jobs already used ``gpu_hours_per_day`` accelerator-hours today (UTC) may not submit more until
midnight UTC (``Retry-After`` says when); one whose datasets and runs hold more than ``storage_gb`` (10^9 bytes a
GB) may neither submit nor upload until they delete some. Jobs already queued or running are not stopped.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from fastapi import HTTPException
from sqlalchemy.orm import Session, sessionmaker

from store.db import utcnow
from store.quotas import QuotaExceeded, limits_for
from store.settings import Settings
from store.usage import accelerator_seconds_on, storage_bytes

GB = 10**9


def check_gpu_hours(db: Session, owner: str, settings: Settings, now: datetime | None = None) -> None:
    """QuotaExceeded when the owner's accelerator-hours today (UTC) reached their ``gpu_hours_per_day``."""
    allowed = limits_for(settings, owner).gpu_hours_per_day
    used = accelerator_seconds_on(db, owner, (now or utcnow()).date()) / 3600
    if used >= allowed:
        raise QuotaExceeded("gpu_hours_per_day", allowed, used,
                            f"your jobs used {used:.2f} accelerator-hours today (UTC): submit again after "
                            "00:00 UTC")


def check_storage(db: Session, owner: str, settings: Settings, adding: int = 0) -> None:
    """QuotaExceeded when the owner's datasets and runs, with ``adding`` bytes more, would hold over ``storage_gb``
    (with nothing added: when they already hold more)."""
    allowed = limits_for(settings, owner).storage_gb
    used = sum(storage_bytes(db, owner))
    if used + adding > allowed * GB:
        more = f" and this upload's {adding / GB:.3f} GB" if adding else ""
        raise QuotaExceeded("storage_gb", allowed, used / GB,
                            f"your datasets and runs hold {used / GB:.3f} GB{more}: delete datasets or ended jobs "
                            "first")


def refused(err: QuotaExceeded, now: datetime | None = None) -> HTTPException:
    """The 429 of a quota; an accelerator-hours one says in ``Retry-After`` when the UTC day ends."""
    headers = {}
    if err.limit == "gpu_hours_per_day":
        now = now or utcnow()
        midnight = datetime.combine(now.date() + timedelta(days=1), time(), UTC)
        headers["Retry-After"] = str(max(1, int((midnight - now).total_seconds())))
    return HTTPException(429, str(err), headers=headers or None)


def check_usage_quotas(db: Session, owner: str, settings: Settings) -> None:
    """A submit's usage quotas: 429 when the owner's accelerator-hours today or their storage is past its limit."""
    try:
        check_gpu_hours(db, owner, settings)
        check_storage(db, owner, settings)
    except QuotaExceeded as err:
        raise refused(err) from None


def check_upload_quota(sessions: sessionmaker, owner: str, settings: Settings, adding: int) -> None:
    """An upload's storage quota, in a short session of its own: 429 when ``adding`` bytes more (the size the
    client declared) would take the owner past ``storage_gb``."""
    with sessions() as db:
        try:
            check_storage(db, owner, settings, adding)
        except QuotaExceeded as err:
            raise refused(err) from None
