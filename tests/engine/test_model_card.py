"""The model card: rendered from a dict, written into every checkpoint and export by a real (tiny) run, its figures
those the run logged (the base's too after a resume), its datasets' sha256 those of the files, and its loading code
runs."""

import hashlib
import json
import math
import re
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from mol_engine.callbacks import JsonlLogger
from mol_engine.export import export_checkpoint
from mol_engine.model_card import (
    base_model_name,
    card_evaluations,
    card_from_state,
    dataset_entries,
    front_matter,
    portable_files,
    reference_names,
    render_model_card,
    weight_text,
)
from mol_engine.train import train

SPEC = {"name": "law", "base_model": "/srv/mol/models/tiny", "domain_data": ["/srv/mol/datasets/ab12.jsonl"],
        "general_data": ["/srv/mol/datasets/cd34.jsonl"], "eval_data": None, "general_source": "corpus",
        "method": "mol", "finetune": "lora", "lora": {"rank": 4, "alpha": 8.0}, "kl_weight": 0.5,
        "kl_direction": "reverse", "ratio": "1:1", "reference": "exact", "max_steps": 10}
CARD = {"name": "law", "base_model": "/srv/mol/models/tiny", "license": "apache-2.0", "method": "mol",
        "finetune": "lora", "step": 10, "spec": SPEC,
        "datasets": [{"role": "domain", "file": "/srv/mol/datasets/ab12.jsonl", "sha256": "a" * 64},
                     {"role": "general", "file": "/srv/mol/datasets/cd34.jsonl", "sha256": "b" * 64}],
        "evaluations": {"0": {"eval/domain_ppl": 20.0, "eval/general_kl": 0.0},
                        "10": {"eval/domain_ppl": 10.0, "eval/general_kl": 0.125}},
        "software": {"torch": "2.13.0", "peft": "0.21.2"}}


def code_blocks(card: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", card, re.DOTALL)


@pytest.mark.parametrize("kind", ["full", "adapter", "merged"])
def test_a_card_renders_from_a_dict(kind):
    card = render_model_card(CARD, kind)
    head = front_matter(card)
    assert head["base_model"] == "/srv/mol/models/tiny" and head["license"] == "apache-2.0"
    assert head["library_name"] == ("peft" if kind == "adapter" else "transformers")
    assert head["tags"][:2] == ["mol-studio", "continual-pretraining"] and "lora" in head["tags"]
    assert "| Domain perplexity (held-out) | 20 | 10 | -10 |" in card
    assert f"| Domain cross-entropy, nats/token (held-out) | {math.log(20):.4g} | {math.log(10):.4g} |" in card
    assert "| KL to the base on held-out general text | 0 | 0.125 | +0.125 |" in card
    assert f"| domain | /srv/mol/datasets/ab12.jsonl | `{'a' * 64}` |" in card
    assert yaml.safe_load(code_blocks(card, "yaml")[0]) == SPEC  # the spec, whole, as YAML
    assert "- torch 2.13.0" in card and "`kl_weight` 0.5" in card
    (code,) = code_blocks(card, "python")
    compile(code, "card", "exec")
    assert ("PeftModel.from_pretrained(base, path)" in code) == (kind == "adapter")


def test_the_service_renames_paths_to_its_model_id_and_the_owners_dataset_names(tmp_path):
    submitted = SPEC | {"base_model": "tiny", "domain_data": ["ds_1"], "general_data": ["ds_2"]}
    names = reference_names(SPEC, submitted, {"ds_1": "law.jsonl (ds_1)"})
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": SPEC["base_model"], "r": 4}))
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": SPEC["base_model"]}))  # as transformers 4 saved
    (tmp_path / "tokenizer_config.json").write_text("{}")
    files = {name: data.decode() for name, data in portable_files(tmp_path, CARD, "adapter", names).items()}
    assert sorted(files) == ["README.md", "adapter_config.json", "config.json"]  # the tokenizer's names no path
    assert not [name for name, text in files.items() if "/srv" in text]
    placeholder = "<local base model 'tiny': not on the Hugging Face hub; put its directory here>"
    assert json.loads(files["adapter_config.json"]) == {"base_model_name_or_path": placeholder, "r": 4}
    assert json.loads(files["config.json"]) == {"_name_or_path": "tiny"}
    card = files["README.md"]
    assert front_matter(card)["base_model"] == "tiny" and 'from_pretrained("path/to/the/base")' in card
    assert "| domain | law.jsonl (ds_1) |" in card and "| general | ds_2 |" in card  # a deleted dataset: its id


def test_the_card_shows_the_base_and_the_latest_evaluation_up_to_its_step():
    history = {0: {"m": 1.0}, 4: {"m": 2.0}, 8: {"m": 3.0}}
    assert card_evaluations(history, 6) == {"0": {"m": 1.0}, "4": {"m": 2.0}}
    assert card_evaluations(history, 0) == {"0": {"m": 1.0}}
    no_base = render_model_card(CARD | {"evaluations": {"10": {"eval/domain_ppl": 9.0}}, "license": None}, "full")
    assert "| Domain perplexity (held-out) | – | 9 |  |" in no_base and "license" not in front_matter(no_base)


def test_a_checkpoint_written_before_cards_gets_one_from_its_state():
    card = render_model_card(card_from_state({"spec": SPEC, "step": 4}), "adapter")
    assert "# law, step 4" in card and "No evaluation was recorded" in card and front_matter(card)["tags"]


def test_a_data_file_gone_since_leaves_its_sha256_out(tmp_path):
    entries = dataset_entries(SPEC | {"domain_data": [str(tmp_path / "gone.jsonl")], "general_data": []})
    assert entries == [{"role": "domain", "file": str(tmp_path / "gone.jsonl"), "sha256": None}]


def test_the_base_is_named_by_its_hub_name_when_its_config_records_one(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "org/base-7b"}))
    assert base_model_name(str(tmp_path)) == "org/base-7b" and base_model_name("org/other") == "org/other"
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "/home/me/base"}))
    assert base_model_name(str(tmp_path)) == str(tmp_path)  # a path is no name: the service renames it
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "a1b2c3"
    snapshot.mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "qwen").symlink_to(snapshot)  # a models_dir entry linked into the Hugging Face cache
    assert base_model_name(str(tmp_path / "models" / "qwen")) == "Qwen/Qwen2.5-0.5B"


def test_an_adapter_of_a_hub_base_names_it_and_one_of_a_local_base_a_placeholder(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/srv/x", "r": 4}))
    hub = CARD | {"base_model": "org/base-7b", "base_hub": True, "base_source": "the Hugging Face hub"}
    files = portable_files(tmp_path, hub, "adapter", {})
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "org/base-7b"
    card = files["README.md"].decode()
    assert "`org/base-7b`, from the Hugging Face hub." in card and 'from_pretrained("org/base-7b")' in card
    local = render_model_card(CARD | {"base_source": "the local directory `/srv/mol/models/tiny`"}, "adapter")
    assert ("`/srv/mol/models/tiny` is not on the Hugging Face hub: it is the local directory "
            "`/srv/mol/models/tiny`. Loading this adapter needs a copy") in local


def test_a_run_writes_the_card_into_its_checkpoints_and_exports(make_spec, corpora, tiny_model_dir, tmp_path,
                                                                monkeypatch):
    spec = make_spec(finetune="lora", lora={"rank": 4}, lr=1e-2, max_steps=2, eval_every=1, save_every=1)
    train(spec, tmp_path / "run", [JsonlLogger(tmp_path / "run")])
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-2")  # resumed from step-1: step 0 is not evaluated again
    result = train(spec, tmp_path / "run", [JsonlLogger(tmp_path / "run")], resume=True)
    evals = {p["step"]: p for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "eval/domain_ppl" in (p := json.loads(line))}
    card = (result.checkpoint / "model" / "README.md").read_text()
    assert front_matter(card)["library_name"] == "peft"
    assert "| Metric | Base (step 0) | step 2 (this checkpoint) |" in card
    row = f"| Domain perplexity (held-out) | {evals[0]['eval/domain_ppl']:.4g} | {evals[2]['eval/domain_ppl']:.4g} |"
    assert row in card and "| QA exact match |" in card
    for role, name in (("domain", "domain"), ("general", "general"), ("evaluation (QA)", "eval")):
        digest = hashlib.sha256(corpora[name].read_bytes()).hexdigest()
        assert f"| {role} | {corpora[name]} | `{digest}` |" in card
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert sorted(map(int, state["evaluations"])) == [0, 1, 2]  # the history, carried on through the resume

    adapter = export_checkpoint(result.checkpoint, tmp_path / "adapter")
    merged = export_checkpoint(result.checkpoint, tmp_path / "merged", merged=True)
    assert front_matter((adapter / "README.md").read_text())["library_name"] == "peft"
    merged_card = (merged / "README.md").read_text()
    assert front_matter(merged_card)["library_name"] == "transformers" and row in merged_card

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the adapter card's code saves ./merged: its instructions run as written
    via_adapter, via_merged = {}, {}
    adapter_code = code_blocks(card, "python")[0].replace("path/to/this/directory", str(adapter))
    exec(adapter_code.replace("path/to/the/base", str(tiny_model_dir)), via_adapter)  # a local base: its directory
    exec(code_blocks(merged_card, "python")[0].replace("path/to/this/directory", str(merged)), via_merged)
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = via_merged["model"](ids).logits
    torch.testing.assert_close(via_adapter["model"](ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "cwd" / "merged" / "model.safetensors").is_file()
    assert not torch.allclose(AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits, expected)


def test_the_weight_reads_as_the_spec_states_it():
    assert weight_text({"kl_weight": 0.5}) == "0.5"
    assert weight_text({"kl_weight": "auto", "target_general_kl": 0.05}) == "auto (target_general_kl 0.05)"
