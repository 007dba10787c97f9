import json
import re

import pytest
import yaml

from mol_cli.main import main
from mol_engine.spec_file import load_spec, parse_overrides


def write_spec(path, tiny_model_dir, corpora, **extra):
    spec = {"base_model": str(tiny_model_dir), "domain_data": [str(corpora["domain"])],
            "general_data": [str(corpora["general"])], "seq_len": 32, "batch_size": 4, "max_steps": 3,
            "eval_every": 3, "save_every": 3, "eval_batches": 1, "lr": 1e-3} | extra
    path.write_text(yaml.safe_dump(spec))
    return path


def test_parse_overrides_nests_and_types_values():
    assert parse_overrides(["max_steps=20", "lora.rank=8", "ratio=4:1", "general_data=[a, b]", "lr=1e-3"]) == {
        "max_steps": 20, "lora": {"rank": 8}, "ratio": "4:1", "general_data": ["a", "b"], "lr": 0.001}


def test_spec_yaml_keeps_ratios_as_written(tmp_path):
    (tmp_path / "s.yaml").write_text("base_model: m\ndomain_data: [d]\ngeneral_data: [g]\nratio: 4:1\nlr: 3e-4\n")
    spec = load_spec(tmp_path / "s.yaml", ["kl_weight=0.5"])
    assert (spec.ratio, spec.lr, spec.kl_weight) == ("4:1", 3e-4, 0.5)


def test_train_writes_metrics_events_and_checkpoints(tmp_path, tiny_model_dir, corpora, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_model_dir, corpora)
    out = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(out), "--set", "max_steps=2", "--set", "save_every=1"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 2]  # eval at 0, train 1, train 2, final eval 2
    assert (out / "events.jsonl").is_file() and (out / "checkpoints" / "step-2" / "model").is_dir()
    printed = capsys.readouterr().out
    assert "train/domain_ce" in printed and "checkpoints/step-2" in printed

    assert main(["export", str(out / "checkpoints" / "step-2"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()


def test_bad_spec_names_the_field(tmp_path, tiny_model_dir, corpora, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_model_dir, corpora, kl_weight=-2)
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--set", "lora.rnk=3"]) == 2
    err = capsys.readouterr().err
    assert "kl_weight: Input should be greater than or equal to 0" in err and "lora.rnk: unknown field" in err
    assert "Traceback" not in err


def test_bad_data_names_the_line(tmp_path, tiny_model_dir, corpora, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "fine"}\n{oops}\n')
    spec = write_spec(tmp_path / "spec.yaml", tiny_model_dir, corpora, domain_data=[str(bad)])
    assert main(["train", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "bad.jsonl, line 3: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a failed start leaves no empty run directory


def test_missing_model_directory_is_a_clear_error(tmp_path, tiny_model_dir, corpora, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_model_dir, corpora, base_model=str(tmp_path / "nope"))
    assert main(["train", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "base_model:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()  # a directory that was there before is the user's: kept
    assert main(["train", str(spec), "--out", str(tmp_path / "kept")]) == 2 and (tmp_path / "kept").is_dir()


def test_a_seq_len_beyond_the_models_context_is_refused_before_any_work(tmp_path, tiny_model_dir, corpora, capsys):
    spec = write_spec(tmp_path / "spec.yaml", tiny_model_dir, corpora, seq_len=100_000, batch_size=64)
    assert main(["train", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "seq_len: 100000 is longer than" in err and "max_position_embeddings 256" in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_the_context_is_read_from_the_config_or_its_text_config(tmp_path):
    from mol_engine.context import config_context, model_context

    assert config_context({"n_positions": 1024}) == ("n_positions", 1024)
    assert config_context({"text_config": {"max_position_embeddings": 8192}}) == ("max_position_embeddings", 8192)
    assert config_context({"hidden_size": 32}) is None and model_context(tmp_path / "absent") is None


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and re.fullmatch(r"mol \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)
