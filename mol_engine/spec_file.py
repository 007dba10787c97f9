"""Spec files: the one reader of a job spec written as YAML (or JSON, which is YAML), used by every command that
reads one (`mol train`, `mol sweep`, `mol replicate`, `mol client submit`, `mol client sweeps create`).

PyYAML reads YAML 1.1, where ``ratio: 4:1`` is the base-60 integer 241 and ``lr: 1e-3`` a string. A spec means
what YAML 1.2 and the dashboard's YAML view mean: the ratio stays the text ``4:1`` and ``1e-3`` is a float.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


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
