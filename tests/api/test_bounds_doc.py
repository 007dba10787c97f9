"""docs/service.md's table of bounds lists every bound among the settings, each with the code's default, so the
table cannot drift from store/settings.py."""

import re
from pathlib import Path

from store.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"
# settings that place or name things rather than bound a request, an owner or a process
NOT_BOUNDS = {"home", "database_url", "broker_url", "models_dir", "demo_model", "demo_pretrain_steps", "demo_cache",
              "tokens", "cors_origins", "webhook_allow_hosts", "worker_capacity"}


def shown(value) -> str:
    """A default as the table writes it."""
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table_rows() -> dict[str, str]:
    """MOL_NAME -> default, from the rows of the section 'Bounds'."""
    section = DOC.read_text().split("\n## Bounds", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(MOL_[A-Z0-9_]+)` \| ([^|]+?) \|", section, flags=re.M))


def test_every_bound_setting_is_in_the_table_with_the_codes_default():
    rows = table_rows()
    bounds = {f"MOL_{name.upper()}": field for name, field in Settings.model_fields.items() if name not in NOT_BOUNDS}
    assert sorted(bounds.keys() - rows.keys()) == []  # a bound the table does not list
    assert sorted(rows.keys() - bounds.keys()) == []  # a row for no setting (renamed or removed)
    for env, field in bounds.items():
        assert rows[env] == shown(field.get_default(call_default_factory=True)), env
        assert field.description, f"{env} has no description: the table and /docs show it"
