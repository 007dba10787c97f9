"""The offline demo: files, loading, tokenizer, determinism, reuse. Quick builds (a few pretraining steps)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from mol_engine import demo
from mol_engine.demo import DemoPaths, build_demo

QUICK_STEPS = 2
FILES = [
    "domain.jsonl",
    "general.jsonl",
    "eval.jsonl",
    "model/model.safetensors",
    "model/tokenizer.json",
    "model/config.json",
    "model/tokenizer_config.json",
]


def _no_network(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the demo must not touch the network")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoPaths, list[str]]:
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        paths = build_demo(tmp_path_factory.mktemp("demo") / "demo", pretrain_steps=QUICK_STEPS, log=messages.append)
    return paths, messages


def _jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_writes_a_loadable_model_and_corpora(built: tuple[DemoPaths, list[str]]) -> None:
    paths, messages = built
    assert paths == DemoPaths.under(paths.root)
    for name in FILES:
        assert (paths.root / name).is_file(), name
    assert (paths.root / demo.MARKER).is_file()
    assert all((paths.root / name).stat().st_mode & 0o044 == 0o044 for name in FILES)  # readable by a worker
    assert any(f"step {QUICK_STEPS}/{QUICK_STEPS}" in m for m in messages)

    tokenizer = AutoTokenizer.from_pretrained(paths.model)
    model = AutoModelForCausalLM.from_pretrained(paths.model)
    config = model.config
    assert config.model_type == "llama" and config.tie_word_embeddings
    assert config.vocab_size == len(tokenizer)
    assert config.eos_token_id == config.bos_token_id == tokenizer.eos_token_id == tokenizer.bos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6
    ids = tokenizer("Return the value.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], config.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "text",
    [
        "Return the sum of a and b.",
        "  leading spaces,\ttabs\nand\n\nnewlines  ",
        "Question: What is 7 plus 5?\nAnswer: 12",
        "naïve café — 数字 😀",
        "x = {'k': [1, 2.5e-3]}\r\n",
    ],
)
def test_saved_tokenizer_round_trips_and_adds_no_special_tokens(built: tuple[DemoPaths, list[str]], text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built[0].model)
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id not in ids and tokenizer.pad_token_id not in ids
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|endoftext|>",
        "<|endoftext|>",
        "<|pad|>",
    )


def test_build_tokenizer_vocabulary_and_specials() -> None:
    tokenizer = demo.build_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300)
    assert len(tokenizer) <= 300
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|pad|>"]) == [0, 1]
    assert tokenizer.decode(tokenizer.encode("Zebra 42 ü")) == "Zebra 42 ü"  # bytes never seen in training


def test_corpora_shapes_and_eval_is_answerable_from_domain(built: tuple[DemoPaths, list[str]]) -> None:
    paths = built[0]
    domain = [row["text"] for row in _jsonl(paths.domain)]
    general = [row["text"] for row in _jsonl(paths.general)]
    evals = _jsonl(paths.eval)
    assert len(evals) == 100 and all(set(e) == {"question", "answer"} for e in evals)
    assert len({e["question"] for e in evals}) == 100
    for e in evals:
        assert not e["question"].startswith("Question:") and e["answer"].isdigit()
        a, b = (int(tok.rstrip("?")) for tok in e["question"].split()[2::2])
        assert int(e["answer"]) == a + b
        assert f"Question: {e['question']}\nAnswer: {e['answer']}" in domain  # a standalone QA document
    assert 100 <= len(domain) <= 5000 and paths.domain.stat().st_size < 500_000
    assert len(general) > 100 and 50_000 < paths.general.stat().st_size < 1_000_000
    assert not any("plus" in g and "Answer:" in g for g in general)


def test_general_text_is_disjoint_from_pretraining_text() -> None:
    docs = demo.general_documents()
    assert docs == sorted(set(docs)) and len(docs) > 1000
    pretrain, general = demo.split_general(docs)
    assert not set(pretrain) & set(general)
    assert 0.1 < len(general) / len(docs) < 0.3


def test_same_arguments_give_byte_identical_builds(tmp_path: Path, built: tuple[DemoPaths, list[str]]) -> None:
    first = built[0]
    second = build_demo(tmp_path / "again", pretrain_steps=QUICK_STEPS)
    for name in FILES:
        assert (first.root / name).read_bytes() == (second.root / name).read_bytes(), name
    other_seed = build_demo(tmp_path / "seed1", pretrain_steps=QUICK_STEPS, seed=1)
    assert other_seed.domain.read_bytes() != first.domain.read_bytes()
    assert (other_seed.model / "model.safetensors").read_bytes() != (first.model / "model.safetensors").read_bytes()


def test_complete_demo_is_reused_and_other_settings_rebuild(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    paths = build_demo(root, pretrain_steps=1)
    weights = paths.model / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    messages: list[str] = []
    assert build_demo(root, pretrain_steps=1, log=messages.append) == paths
    assert messages == [] and weights.stat().st_mtime_ns == stamp

    build_demo(root, pretrain_steps=2, log=messages.append)
    assert any("step 2/2" in m for m in messages)
    assert json.loads((root / demo.MARKER).read_text())["pretrain_steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary build directory left


def test_incomplete_demo_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    root.mkdir()
    (root / "domain.jsonl").write_text("half written")
    paths = build_demo(root, pretrain_steps=1)
    assert paths.domain.read_text() != "half written" and (root / demo.MARKER).is_file()


def test_default_directory_follows_mol_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOL_HOME", str(tmp_path))
    assert demo.default_demo_dir() == tmp_path / "demo"
    monkeypatch.delenv("MOL_HOME")
    assert demo.default_demo_dir() == Path(".mol") / "demo"


def test_tiny_config_sets_token_ids_and_size() -> None:
    config = demo.tiny_llama_config(2048, bos_token_id=5, eos_token_id=6, pad_token_id=7)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (5, 6, 7)
    assert config.tie_word_embeddings and config.attention_dropout == 0
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert 1e6 < params < 3e6
    assert [demo.number_words(n) for n in (0, 7, 18)] == ["zero", "seven", "eighteen"]
