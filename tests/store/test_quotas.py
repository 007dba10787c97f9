"""Per-owner limits: the settings, overridden per owner, and a typo in an override refused at start."""

import pytest
from pydantic import ValidationError

from store.quotas import LIMIT_NAMES, QuotaExceeded, limits_for
from store.settings import Settings


def test_an_override_replaces_only_the_limits_it_names():
    settings = Settings(owner_running_jobs=3, owner_limits={"alice": {"running_jobs": 5, "gpu_hours_per_day": 1.5}})
    alice, bob = limits_for(settings, "alice"), limits_for(settings, "bob")
    assert (alice.running_jobs, alice.gpu_hours_per_day, alice.queued_jobs) == (5, 1.5, settings.owner_queued_jobs)
    assert (bob.running_jobs, bob.gpu_hours_per_day) == (3, settings.owner_gpu_hours_per_day)
    assert isinstance(alice.running_jobs, int)


@pytest.mark.parametrize("override", [{"gpu": 1}, {"running_jobs": -1}])
def test_an_unknown_or_negative_override_is_refused_naming_it(override):
    with pytest.raises(ValidationError, match="MOL_OWNER_LIMITS: owner 'alice'"):
        Settings(owner_limits={"alice": override})


def test_the_message_names_the_limit_and_its_setting():
    message = str(QuotaExceeded("queued_jobs", 100, 100, "alice has 100 jobs queued"))
    assert "queued_jobs" in message and "MOL_OWNER_QUEUED_JOBS" in message and "alice has 100" in message
    assert set(LIMIT_NAMES) == {"running_jobs", "queued_jobs", "gpu_hours_per_day", "storage_gb", "max_priority"}
