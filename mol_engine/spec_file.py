"""Spec files: the one reader of a job spec written as YAML (or JSON, which is YAML), used by every command that
reads one (`mol train`, `mol sweep`, `mol replicate`, `mol client submit`, `mol client sweeps create`), and of the
spec values typed on a command line (``--set FIELD=VALUE``, ``--grid FIELD=V1,V2``).

PyYAML reads YAML 1.1, where ``ratio: 4:1`` is the base-60 integer 241 and ``lr: 1e-3`` a string. A spec means
what YAML 1.2 and the dashboard's YAML view mean: the ratio stays the text ``4:1`` and ``1e-3`` is a float.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .spec import JobSpec


class SpecLoader(yaml.SafeLoader):
    """YAML without 1.1's base-60 numbers (``ratio: 4:1`` stays a string) and with ``1e-3`` as a float."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789"))
SpecLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+]?[0-9]+)?$|^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"
               r"|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)


class SpecFileError(ValueError):
    """A spec file that cannot be read as a mapping of fields; the message names the file."""


def load_yaml(text: str) -> Any:
    """The value ``text`` holds, parsed with :class:`SpecLoader`."""
    return yaml.load(text, Loader=SpecLoader)  # a SafeLoader subclass: no arbitrary objects


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The mapping of fields in the spec file at ``path`` (an empty file is {}), not yet validated; SpecFileError
    when the file is missing, is not YAML, or holds something other than a mapping."""
    try:
        raw = load_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise SpecFileError(f"{path}: spec file not found") from None
    except yaml.YAMLError as err:
        raise SpecFileError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecFileError(f"{path}: a job spec is a mapping of field: value (YAML or JSON), "
                            f"not {type(raw).__name__}")
    return raw


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lora.rank=8", "max_steps=20"]`` -> nested dict; values are parsed as YAML (numbers, lists, ...)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        field, sep, raw = pair.partition("=")
        if not sep or not field.strip():
            raise SpecFileError(f"--set {pair!r}: expected FIELD=VALUE")
        target = out
        *parents, leaf = field.strip().split(".")
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = load_yaml(raw) if raw.strip() else ""
    return out


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    """``["ratio=4:1,1:1", "kl_weight=0.5,1"]`` -> ``{"ratio": ["4:1", "1:1"], "kl_weight": [0.5, 1]}`` (values as
    YAML: numbers stay numbers, ratios stay strings); SpecFileError naming a pair not so written or a field given
    twice."""
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise SpecFileError(f"--grid {pair!r}: expected FIELD=V1,V2,... such as ratio=4:1,1:1")
        if key.strip() in grid:
            raise SpecFileError(f"--grid {key.strip()}: given twice; list all its values in one --grid")
        grid[key.strip()] = [load_yaml(v.strip()) for v in raw.split(",")]
    return grid


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged


def load_spec_dict(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """The mapping in a spec file with ``--set`` overrides applied, not yet validated; SpecFileError when the file
    or an override cannot be read."""
    return _merge(read_spec_file(path), parse_overrides(list(overrides)))


def load_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """The JobSpec in a spec file with ``--set`` overrides applied; SpecFileError naming each invalid field."""
    from pydantic import ValidationError

    from .spec import JobSpec, format_validation_error

    raw = load_spec_dict(path, overrides)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecFileError(f"invalid job spec {path}:\n{format_validation_error(err)}") from None
