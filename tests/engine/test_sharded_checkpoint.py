"""Sharded checkpoints under FSDP (torch.distributed.checkpoint): 2 CPU processes (gloo) save their shards, resume
exactly, resume at 1 process, and export gathers the shards into a Hugging Face directory."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_distributed import KEYS, ROOT, launch, points, torchrun

from mol_cli.main import main
from mol_engine.callbacks import JsonlLogger
from mol_engine.checkpoint import MetadataReader, load_checkpoint, read_sharded_weights
from mol_engine.run_dir import RunDir, is_sharded_checkpoint
from mol_engine.spec import JobSpec
from mol_engine.train import train


@pytest.fixture(scope="module")
def runs(tiny_model_dir, corpora, tmp_path_factory) -> dict:
    """One process (batch 8) and two under FSDP (batch 4 each), 4 steps, a checkpoint every 2; then the FSDP run
    resumed from step-2 (its uninterrupted points kept apart)."""
    root = tmp_path_factory.mktemp("sharded")
    single = JobSpec(name="tiny", base_model=str(tiny_model_dir), domain_data=[str(corpora["domain"])],
                     general_data=[str(corpora["general"])], eval_data=str(corpora["eval"]), seq_len=32,
                     batch_size=8, lr=3e-3, warmup_steps=1, max_steps=4, eval_every=4, save_every=2, eval_batches=2,
                     qa_max_new_tokens=3, seed=0, distributed="fsdp")
    train(single, root / "one", [JsonlLogger(root / "one")])
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(single.model_copy(update={"batch_size": 4}).model_dump(mode="json")))
    torchrun(spec_path, root / "two")
    shutil.copytree(root / "two", root / "uninterrupted")
    shutil.rmtree(root / "two" / "checkpoints" / "step-4")
    torchrun(spec_path, root / "two", "--resume")
    return {"root": root, "single": single, "one": root / "one", "two": root / "two",
            "uninterrupted": root / "uninterrupted"}


def assert_follows(reference: list[dict], run: list[dict], rel: float) -> None:
    assert [p["step"] for p in run] == [p["step"] for p in reference]  # rank 0 alone logged, every step once
    for a, b in zip(reference, run, strict=True):
        for key in KEYS:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-6), (a["step"], key)


def test_fsdp_run_evaluates_saves_and_resumes_exactly(runs):
    """The whole loop under FSDP (evaluation and QA generation, sharded checkpoints, resume) follows one process,
    and the resumed run repeats the uninterrupted one."""
    one, two, uninterrupted = points(runs["one"]), points(runs["two"]), points(runs["uninterrupted"])
    assert_follows(one, uninterrupted, rel=1e-4)  # (evaluation reads eval_batches x batch_size: fewer per process)
    train_points = [[p[k] for k in KEYS if k in p] for p in uninterrupted]
    assert train_points == [[p[k] for k in KEYS if k in p] for p in two]  # resumed: bit for bit
    evals = [p for p in two if "eval/general_kl" in p]
    assert [p["step"] for p in evals] == [0, 4] and "eval/qa_exact_match" in evals[0]
    assert abs(evals[0]["eval/general_kl"]) < 1e-6 < evals[1]["eval/general_kl"]  # the sharded base is the base


def test_each_rank_writes_its_shards_and_nothing_is_gathered(runs):
    step = runs["two"] / "checkpoints" / "step-4"
    assert is_sharded_checkpoint(step) and not is_sharded_checkpoint(runs["one"] / "checkpoints" / "step-4")
    assert sorted(p.name for p in (step / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert sorted(p.name for p in (step / "rng").iterdir()) == ["rank-0.safetensors", "rank-1.safetensors"]
    assert (step / "model" / "config.json").is_file() and (step / "model" / "tokenizer.json").is_file()
    assert not list((step / "model").glob("*.safetensors"))  # the weights are in the shards alone
    assert not (step / "optimizer.safetensors").exists()
    state = json.loads((step / "trainer_state.json").read_text())
    names = [name for group in state["optimizer_groups"] for name in group["params"]]
    assert "model.embed_tokens.weight" in names  # parameter groups by name, as JSON
    assert not list((runs["two"] / "checkpoints").glob(".step-*"))  # no temporary left


def test_resume_at_one_process_from_two_process_shards(runs, tmp_path):
    """DCP reshards: the 2-process checkpoint of step 2 loads into the plain model, and the curve goes on."""
    shutil.copytree(runs["uninterrupted"], tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-4")
    single = runs["single"]
    train(single, tmp_path / "run", [JsonlLogger(tmp_path / "run")], resume=True)
    assert_follows(points(runs["one"]), points(tmp_path / "run"), rel=1e-4)
    # one process writes the usual format
    assert not is_sharded_checkpoint(RunDir(tmp_path / "run").latest_checkpoint())


def test_fsdp_resumes_from_a_one_process_checkpoint(runs, tmp_path):
    """The other way round: 2 processes under FSDP resume from the Hugging Face checkpoint 1 process wrote (each
    rank reads it whole and keeps its shard), follow the curve, and write shards from then on."""
    shutil.copytree(runs["one"], tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-4")
    torchrun(runs["root"] / "spec.yaml", tmp_path / "run", "--resume")
    assert_follows(points(runs["one"]), points(tmp_path / "run"), rel=1e-4)
    assert is_sharded_checkpoint(tmp_path / "run" / "checkpoints" / "step-4")


def test_export_gathers_the_shards_into_a_loadable_model(runs, tiny_model_dir, tmp_path):
    """``mol export`` on a sharded checkpoint: an HF directory whose logits are those of the trained weights."""
    from transformers import AutoModelForCausalLM

    step = runs["two"] / "checkpoints" / "step-4"
    assert main(["export", str(step), str(tmp_path / "export")]) == 0
    out = tmp_path / "export"
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    trained = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    optimizer = torch.optim.AdamW(trained.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    load_checkpoint(step, trained, optimizer, scheduler, lora=False)  # the resume path, at 1 process
    single = AutoModelForCausalLM.from_pretrained(runs["one"] / "checkpoints" / "step-4" / "model")
    ids = torch.arange(1, 33).reshape(2, 16)
    with torch.no_grad():
        logits = exported(ids).logits
        assert torch.equal(logits, trained(ids).logits)
        assert torch.allclose(logits, single(ids).logits, rtol=1e-3, atol=1e-4)  # the 1-process run's weights
        assert (logits - AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits).abs().max() > 1e-3
    assert (out / "tokenizer.json").is_file() and not (out / "dcp").exists()
    assert load_file(out / "model.safetensors").keys() == load_file(  # the same tensors HF saves (a tied head once)
        runs["one"] / "checkpoints" / "step-4" / "model" / "model.safetensors").keys()


def test_the_shard_index_is_read_without_running_foreign_code(runs, tmp_path):
    """DCP's .metadata is a pickle: it is read admitting DCP's metadata classes only."""
    shutil.copytree(runs["two"] / "checkpoints" / "step-2", tmp_path / "step-2")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "step-2" / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(pickle.UnpicklingError, match="never holds"):
        read_sharded_weights(tmp_path / "step-2")
    assert not marker.exists()
    assert MetadataReader(runs["two"] / "checkpoints" / "step-2" / "dcp").read_metadata().state_dict_metadata


def _global_call_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle calling ``module``'s global ``name`` (dotted names allowed) with ``arg``."""
    def text(value: str) -> bytes:
        return b"X" + len(value.encode()).to_bytes(4, "little") + value.encode()

    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(arg) + b"\x85R."


@pytest.mark.parametrize("module,name", [
    ("torch.distributed.checkpoint.metadata", "os.system"),  # a dotted name through an admitted module
    ("torch.distributed.checkpoint.metadata", "os"),
    ("os", "system"),
    ("torch", "serialization.os.system"),
])
def test_a_crafted_shard_index_runs_nothing_whatever_the_name(module, name, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "dcp").mkdir()
    (tmp_path / "dcp" / ".metadata").write_bytes(_global_call_pickle(module, name, f"touch '{marker}'"))
    with pytest.raises(pickle.UnpicklingError, match=f"names {module}.{name}, which a checkpoint index never holds"):
        MetadataReader(tmp_path / "dcp").read_metadata()
    assert not marker.exists()


def test_a_real_shard_index_still_reads(tmp_path):
    """The index of a one-process DCP save (a model, its AdamW state, plain values) passes the admitted pairs."""
    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    dcp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "extra": {"x": 1}},
             storage_writer=dcp.FileSystemWriter(tmp_path / "dcp"))
    index = MetadataReader(tmp_path / "dcp").read_metadata().state_dict_metadata
    assert index["model.weight"].size == torch.Size([2, 3]) and index["model.weight"].properties.dtype == torch.float32


def test_full_disk_on_rank_1_stops_both_ranks_and_keeps_the_last_checkpoint(runs, tmp_path):
    """A rank other than 0 fails its write: every rank raises, step-3 is not left half-written."""
    spec = runs["single"].model_copy(update={"batch_size": 4, "max_steps": 3, "save_every": 1, "eval_every": 3,
                                             "keep_checkpoints": 1, "eval_data": None})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    done = launch([str(ROOT / "tests" / "engine" / "full_disk_rank1.py")], spec_path, tmp_path / "two")
    assert done.returncode != 0
    assert "error: disk full while writing checkpoint step-3 under" in done.stderr
    assert "(checkpoints kept: step-2)" in done.stderr
    assert "error: rank 1 could not write checkpoint step-3" in done.stderr  # rank 0's message
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-2"]


def test_the_api_download_gathers_the_shards(runs, tmp_path):
    """The checkpoint download tars an exported directory for a sharded checkpoint, never the weightless model/.
    (Here rather than in tests/api: the API test would need a torchrun of its own to make a sharded checkpoint.)"""
    from api.services.checkpoint_downloads import download_source
    from api.services.checkpoints import download_bytes
    from mol_engine.model_card import front_matter
    from store.usage import tree_bytes

    step = runs["two"] / "checkpoints" / "step-2"
    source = download_source(step, "merged", tmp_path)
    assert source.parent == tmp_path and (source / "model.safetensors").is_file()
    assert front_matter((source / "README.md").read_text())["library_name"] == "transformers"  # the card comes along
    weights = sum(t.numel() * t.element_size() for t in load_file(source / "model.safetensors").values())
    assert download_bytes(step) == tree_bytes(step / "model") + weights  # listed: no optimizer, a tied head once
