"""Per-owner limits (quotas): the service-wide settings, overridden per owner by ``MOL_OWNER_LIMITS``.

One place answers "what may this owner use": the scheduler (how many of their jobs run at once), the submit
path (queued jobs, accelerator-hours per day, storage) and the spec check (the highest priority).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .settings import Settings


@dataclass(frozen=True)
class OwnerLimits:
    """What one owner may use; each field is also a key of ``MOL_OWNER_LIMITS``'s per-owner overrides."""

    running_jobs: int  # jobs running at once; more wait in the queue with a reason
    queued_jobs: int  # jobs waiting at once; one more is a 429
    gpu_hours_per_day: float  # accelerator-hours (processes x hours) per UTC day; past it a submit is a 429
    storage_gb: float  # datasets and runs on disk; past it a submit or upload is a 429
    max_priority: int  # the highest ``priority`` a job may ask for; higher is a 422


LIMIT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(OwnerLimits))
SETTING_OF = {name: f"MOL_OWNER_{name.upper()}" for name in LIMIT_NAMES}  # the setting each limit defaults to


def limits_for(settings: Settings, owner: str) -> OwnerLimits:
    """The owner's limits: ``MOL_OWNER_LIMITS[owner]`` where it names one, else the service-wide setting."""
    override = settings.owner_limits.get(owner, {})
    defaults = {name: getattr(settings, f"owner_{name}") for name in LIMIT_NAMES}
    kinds = {f.name: f.type for f in fields(OwnerLimits)}
    return OwnerLimits(**{name: (int(override[name]) if kinds[name] == "int" else float(override[name]))
                          if name in override else defaults[name] for name in LIMIT_NAMES})


class QuotaExceeded(Exception):
    """A request would take an owner past one of their limits: a 429 whose message names the limit."""

    def __init__(self, limit: str, allowed: float, used: float, what: str) -> None:
        self.limit, self.allowed, self.used = limit, allowed, used
        super().__init__(f"quota {limit} ({SETTING_OF[limit]}, or MOL_OWNER_LIMITS for this owner) is {allowed:g}; "
                         f"{what}")
