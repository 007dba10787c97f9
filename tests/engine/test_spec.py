from typing import get_args

import pytest
from pydantic import BaseModel, ValidationError

from mol_engine import budget, modeling, objective, trackers
from mol_engine.spec import (
    Attention,
    BestMetric,
    JobSpec,
    KLDirection,
    LoraSpec,
    Method,
    Tracker,
    format_validation_error,
)

BASE = {"base_model": "m", "domain_data": ["d.jsonl"], "general_data": ["g.jsonl"]}


def errors(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec(**(BASE | fields))
    return format_validation_error(info.value)


def test_defaults_are_the_papers():
    spec = JobSpec(**BASE)
    assert (spec.method, spec.ratio, spec.kl_weight, spec.schedule, spec.kl_direction) == (
        "mol", "1:1", 1.0, "cosine", "reverse")
    assert spec.rows_per_batch() == (4, 4)


def test_unknown_field_is_named():
    assert errors(learning_rate=0.1) == "learning_rate: unknown field"
    assert "lora.rnk: unknown field" in errors(lora={"rnk": 4})


@pytest.mark.parametrize(
    ("fields", "where"),
    [({"kl_weight": -1}, "kl_weight"), ({"lr": 0}, "lr"), ({"seq_len": 2}, "seq_len"), ({"ratio": "2-1"}, "ratio"),
     ({"ratio": "0:1"}, "ratio"), ({"method": "sft"}, "method"), ({"lora": {"rank": 0}}, "lora.rank"),
     ({"max_steps": 0}, "max_steps"), ({"qa_prompt": "no placeholder"}, "qa_prompt")],
)
def test_out_of_range_fields_are_named(fields, where):
    assert errors(**fields).startswith(f"{where}:")


def test_one_indexed_gpu_for_several_processes_is_refused_naming_both_fields():
    """issue 19, item 11: torchrun's ranks would all bind cuda:1 (each rank picks its GPU only for device cuda)."""
    assert errors(device="cuda:1", nproc=2).startswith("nproc: 2 processes cannot all run on device 'cuda:1'")
    assert JobSpec(**(BASE | {"device": "cuda", "nproc": 2})).nproc == 2
    assert JobSpec(**(BASE | {"device": "cuda:1", "nproc": 1})).device == "cuda:1"


def test_kl_set_point_takes_auto_with_a_target_and_names_both_fields_otherwise():
    """issue 22, item 4: the user states the drift they accept (target_general_kl) with kl_weight: auto."""
    spec = JobSpec(**(BASE | {"kl_weight": "auto", "target_general_kl": 0.05}))
    assert (spec.kl_weight, spec.target_general_kl) == ("auto", 0.05)
    assert JobSpec(**(BASE | {"kl_weight": "0.5"})).kl_weight == 0.5  # numbers as before
    for fields in ({"kl_weight": "auto"}, {"target_general_kl": 0.05}, {"kl_weight": 2, "target_general_kl": 0.05}):
        assert "kl_weight: auto and target_general_kl go together" in errors(**fields)
    assert errors(kl_weight="big") == "kl_weight: Input should be a number or 'auto'"
    assert errors(kl_weight=1001) == "kl_weight: Input should be less than or equal to 1000"
    assert errors(kl_weight="auto", target_general_kl=0).startswith("target_general_kl:")


def test_general_data_required_unless_self_or_domain_only():
    assert "general_data is required" in errors(general_data=[])
    assert JobSpec(**(BASE | {"general_data": [], "general_source": "self"})).uses_general
    assert JobSpec(**(BASE | {"general_data": [], "method": "domain_only"})).rows_per_batch() == (8, 0)
    assert "must be empty" in errors(general_source="self")


@pytest.mark.parametrize(("ratio", "batch", "rows"), [("4:1", 10, (8, 2)), ("1:2", 9, (3, 6)), ("9:1", 4, (3, 1))])
def test_rows_per_batch_follow_the_ratio(ratio, batch, rows):
    assert JobSpec(**(BASE | {"ratio": ratio, "batch_size": batch})).rows_per_batch() == rows


def test_resolve_paths_maps_every_reference():
    spec = JobSpec(**(BASE | {"eval_data": "qa.jsonl"})).resolve_paths(lambda ref: f"/data/{ref}")
    assert (spec.base_model, spec.domain_data, spec.general_data, spec.eval_data) == (
        "/data/m", ["/data/d.jsonl"], ["/data/g.jsonl"], "/data/qa.jsonl")


def test_attention_and_compile_refuse_what_cannot_run_naming_the_field():
    """issue 19, item 3: kernels that cannot run on the spec's device or precision are refused at submit."""
    spec = JobSpec(**BASE)
    assert (spec.attention, spec.compile) == ("auto", "auto")
    assert errors(device="cpu", attention="flash_attention_2").startswith("attention: flash_attention_2 runs on CUDA")
    assert errors(precision="fp32", attention="flash_attention_2").startswith("attention: flash_attention_2 computes")
    assert errors(device="cpu", attention="flex").startswith("attention: flex has no backward pass on CPU")
    assert errors(attention="flash").startswith("attention:") and errors(compile="yes").startswith("compile:")
    fine = JobSpec(**(BASE | {"device": "cuda", "attention": "flex", "compile": "on", "packing": "document"}))
    assert (fine.attention, fine.compile) == ("flex", "on")


@pytest.mark.parametrize("model", [JobSpec, LoraSpec])
def test_every_field_says_what_it_is(model: type[BaseModel]):
    """issue 20: each description feeds /docs, GET /v1/jobspec and the New job form's help."""
    missing = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"{model.__name__} fields without a description: {missing}"


def test_the_schema_offers_each_vocabulary_as_spelled_in_the_spec():
    """The dashboard reads the choices from the schema's enums: they are the spec's aliases, in order."""
    properties = JobSpec.model_json_schema()["properties"]
    assert properties["method"]["enum"] == list(get_args(Method))
    assert properties["kl_direction"]["enum"] == list(get_args(KLDirection))
    assert properties["report_to"]["items"]["enum"] == list(get_args(Tracker))


def test_tables_keyed_by_a_vocabulary_cover_it():
    """A choice added to a spec vocabulary fails here until every table keyed by it knows the new choice."""
    assert set(trackers.PACKAGE) == set(trackers.OUTPUT_DIRS) == set(get_args(Tracker))
    assert set(budget.METRICS) == set(get_args(BestMetric))
    assert set(objective.ROUTES) == {*get_args(Method), "eval"}
    assert set(modeling.ATTENTION) == set(get_args(Attention)) - {"auto"}
