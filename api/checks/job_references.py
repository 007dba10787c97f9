"""What a job spec refers to: the owner's datasets (of the right purpose) and a model this server offers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mol_engine.spec import JobSpec
from mol_engine.task_names import task_entry
from store.lineage import is_checkpoint_ref
from store.models import demo_status
from store.settings import Settings


def dataset_refs(spec: dict[str, Any]) -> set[str]:
    """Every dataset id a stored job spec refers to."""
    refs = set(spec.get("domain_data", [])) | set(spec.get("general_data", []))
    refs |= {spec["sample_prompts"]} if isinstance(spec.get("sample_prompts"), str) else set()
    refs |= {task_entry(e)[1] for e in spec.get("eval_tasks", []) if isinstance(e, str)}
    return refs | ({spec["eval_data"]} if spec.get("eval_data") else set())


def demo_problem(spec: JobSpec, settings: Settings) -> list[str]:
    """A job on ``demo`` while the demo is not ready yet: why, with its progress and ETA."""
    if spec.base_model != "demo" or not settings.demo_model:
        return []
    status = demo_status(settings)
    if status.state == "ready":
        return []
    return [f"base_model: 'demo' is not ready yet. {status.message} Submit again once GET /v1/demo says ready."]


def check_references(spec: JobSpec, owned: dict[str, Any], models: dict[str, Path]) -> list[str]:
    """Problems with a spec's model and dataset ids (``owned``: id -> Dataset of this owner), each naming the field."""
    problems = []
    if spec.base_model not in models and not is_checkpoint_ref(spec.base_model):  # checked by continued_from
        problems.append(f"base_model: unknown model '{spec.base_model}' (see GET /v1/models)")
    fields = [("domain_data", spec.domain_data, "domain"), ("general_data", spec.general_data, "general")]
    fields.append(("eval_data", [spec.eval_data] if spec.eval_data else [], "eval"))
    fields.append(("sample_prompts", [spec.sample_prompts] if isinstance(spec.sample_prompts, str) else [], "prompts"))
    fields.append(("eval_tasks", spec.task_refs(), "task"))
    for field, ids, purpose in fields:
        for i, dataset_id in enumerate(ids):
            where = f"{field}[{i}]" if field in ("domain_data", "general_data", "eval_tasks") else field
            dataset = owned.get(dataset_id)
            if dataset is None:
                problems.append(f"{where}: unknown dataset '{dataset_id}'")
            elif dataset.purpose != purpose:
                problems.append(
                    f"{where}: dataset '{dataset_id}' was uploaded for '{dataset.purpose}', not '{purpose}'")
    return problems
