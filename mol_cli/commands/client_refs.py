"""The datasets a job spec names, as ``mol client submit`` (and ``sweeps create``) lets a user write them: a dataset
id, a local file (uploaded on submit unless the same bytes are stored already, by sha256), the file name of one of
their datasets, or ``demo`` for the demo's corpus of that field. The server takes ids only; a CLI user never copies
a ``ds_…`` id by hand.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from api.client import MolClient
from mol_engine.task_names import task_entry

from .client import say, upload_file

FIELDS = {"domain_data": "domain", "general_data": "general", "eval_data": "eval", "sample_prompts": "prompts"}
DATASET_ID = re.compile(r"ds_[A-Za-z0-9]+$")
DEMO = "demo"


def demo_filename(purpose: str) -> str:
    """The file name the demo's corpus of ``purpose`` is listed under (`mol up` registers demo-domain.jsonl, ...)."""
    return f"demo-{purpose}.jsonl"


def local_file(ref: str, base_dir: Path) -> Path | None:
    """``ref`` as an existing file: as given (from the current directory), else beside the spec; None if neither."""
    given = Path(ref).expanduser()
    for candidate in (given, base_dir / given):
        if candidate.is_file():
            return candidate
    return None


class References:
    """Turns one spec's references into dataset ids, listing the owner's datasets at most once."""

    def __init__(self, client: MolClient, base_dir: Path) -> None:
        self.client, self.base_dir = client, base_dir
        self._listed: list[dict[str, Any]] | None = None

    def listed(self) -> list[dict[str, Any]]:
        if self._listed is None:
            self._listed = self.client.datasets()
        return self._listed

    def dataset_id(self, ref: str, field: str, purpose: str) -> str:
        """The id of the dataset ``ref`` names for ``field``; ValueError naming the field when it names none."""
        path = None if ref == DEMO else local_file(ref, self.base_dir)
        if path is None and DATASET_ID.match(ref):  # an id (the server says which of them it does not know)
            return ref
        if path is not None:
            dataset = upload_file(self.client, path, purpose)
            self._listed = None  # it may be new
            return dataset["id"]
        name = demo_filename(purpose) if ref == DEMO else ref
        named = [d for d in self.listed() if d["filename"] == name and d["purpose"] == purpose]
        if named:  # newest first, as the API lists them
            if len(named) > 1:
                say(f"{field}: {len(named)} of your {purpose} datasets are named '{name}'; using the newest, "
                    f"{named[0]['id']}")
            return named[0]["id"]
        if ref == DEMO:
            raise ValueError(f"{field}: 'demo' names the demo's {purpose} corpus, which this server does not list "
                             f"among your datasets (is the demo built? mol client models list)")
        raise ValueError(f"{field}: '{ref}' is neither a dataset id, a file here or beside the spec, nor the name "
                         f"of one of your {purpose} datasets (mol client datasets list)")


def resolve_spec(client: MolClient, spec: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """``spec`` with each dataset it names (domain_data, general_data, eval_data, a sample_prompts file, the
    eval_tasks) as an id, uploading local files that are not stored yet; paths are tried from the current
    directory, then ``base_dir``."""
    refs = References(client, base_dir)
    resolved = dict(spec)
    for field, purpose in FIELDS.items():
        value = spec.get(field)
        if isinstance(value, str):
            resolved[field] = refs.dataset_id(value, field, purpose)
        elif isinstance(value, list) and field in ("domain_data", "general_data"):  # sample_prompts: inline prompts
            resolved[field] = [refs.dataset_id(v, f"{field}[{i}]", purpose) if isinstance(v, str) else v
                               for i, v in enumerate(value)]
    if isinstance(spec.get("eval_tasks"), list):
        resolved["eval_tasks"] = [task_id(refs, v, i) if isinstance(v, str) else v
                                  for i, v in enumerate(spec["eval_tasks"])]
    return resolved


def task_id(refs: References, entry: str, i: int) -> str:
    """An ``eval_tasks`` entry as ``NAME=ID``: the task keeps its name (its file's, or the one given), not its id's."""
    name, ref = task_entry(entry)
    return f"{name}={refs.dataset_id(ref, f'eval_tasks[{i}]', 'task')}"
