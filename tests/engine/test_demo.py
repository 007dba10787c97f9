"""The offline demo: files, loading, tokenizer, determinism, reuse. Quick builds (a few pretraining steps)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
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
    assert (paths.root / demo.paths.MARKER).is_file()
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
    tokenizer = demo.tokenizer.build_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300)
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
    docs = demo.corpora.general_documents()
    assert docs == sorted(set(docs)) and len(docs) > 1000
    pretrain, general = demo.corpora.split_general(docs)
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
    assert json.loads((root / demo.paths.MARKER).read_text())["pretrain_steps"] == 2
    # no temporary build directory or progress file left; the lock file stays (removing it would race)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo.lock", "demo"]


def test_pretraining_runs_through_the_engines_train_as_one_process(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's base is pretrained by mol_engine.train.train (no loop of its own), on the CPU, as one process even
    inside a torchrun job (the other ranks wait on the build lock, so it must not join their process group)."""
    import mol_engine.train

    seen: list[tuple] = []
    real_train = mol_engine.train.train

    def spy(spec, out_dir, callbacks=(), resume=False):
        seen.append((spec, os.environ.get("WORLD_SIZE")))
        return real_train(spec, out_dir, callbacks, resume)

    monkeypatch.setattr(mol_engine.train, "train", spy)
    monkeypatch.setenv("WORLD_SIZE", "2")
    paths = build_demo(tmp_path / "demo", pretrain_steps=2)
    [(spec, world_size)] = seen
    assert (spec.method, spec.device, spec.precision, spec.max_steps, world_size) == ("domain_only", "cpu", "fp32", 2,
                                                                                      "1")
    assert os.environ["WORLD_SIZE"] == "2"
    assert sorted(p.name for p in paths.root.iterdir()) == ["DEMO_COMPLETE", "domain.jsonl", "eval.jsonl",
                                                            "general.jsonl", "model"]  # no run left behind


def test_incomplete_demo_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    root.mkdir()
    (root / "domain.jsonl").write_text("half written")
    paths = build_demo(root, pretrain_steps=1)
    assert paths.domain.read_text() != "half written" and (root / demo.paths.MARKER).is_file()


def test_default_directory_follows_mol_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOL_HOME", str(tmp_path))
    assert demo.paths.default_demo_dir() == tmp_path / "demo"
    monkeypatch.delenv("MOL_HOME")
    assert demo.paths.default_demo_dir() == Path(".mol") / "demo"


def test_tiny_config_sets_token_ids_and_size() -> None:
    config = demo.model.tiny_llama_config(2048, bos_token_id=5, eos_token_id=6, pad_token_id=7)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (5, 6, 7)
    assert config.tie_word_embeddings and config.attention_dropout == 0
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert 1e6 < params < 3e6
    assert [demo.corpora.number_words(n) for n in (0, 7, 18)] == ["zero", "seven", "eighteen"]


# ------------------------------------------------------------------------- shared cache, lock, progress
VERSIONS = {"python": "3.12", "torch": "2.13.0", "transformers": "4.57.0", "tokenizers": "0.22.0"}


def test_cache_key_names_what_decides_the_build() -> None:
    key = demo.cache.demo_key(400, 0, VERSIONS)
    assert key == demo.cache.demo_key(400, 0, dict(reversed(VERSIONS.items()))) and len(key) == 12
    others = [demo.cache.demo_key(401, 0, VERSIONS), demo.cache.demo_key(400, 1, VERSIONS),
              demo.cache.demo_key(400, 0, VERSIONS | {"torch": "2.14.0"}),
              demo.cache.demo_key(400, 0, VERSIONS | {"python": "3.13"})]
    assert len({key, *others}) == 5


def test_cache_root_follows_the_override_then_xdg_then_home(tmp_path: Path) -> None:
    assert demo.cache.demo_cache_root({"MOL_DEMO_CACHE": str(tmp_path), "XDG_CACHE_HOME": "/x"}) == tmp_path
    assert demo.cache.demo_cache_root({"XDG_CACHE_HOME": "/x"}) == Path("/x/mol-studio")
    assert demo.cache.demo_cache_root({}) == Path.home() / ".cache" / "mol-studio"
    key = demo.cache.demo_key(7, 0, demo.cache.build_versions())
    assert demo.cache.shared_demo_dir(7, cache_root=tmp_path).name == f"demo-{key}"


def test_status_gives_progress_and_eta_from_the_pace_so_far() -> None:
    record = {"phase": "pretraining", "step": 100, "total": 400, "started": 1000.0, "pretrain_started": 1030.0,
              "updated": 1080.0}
    status = demo.progress.read_status(record, complete=False, now=1080.0)
    assert (status.state, status.step, status.total, status.elapsed_s, status.eta_s) == ("building", 100, 400, 80, 150)
    assert status.message == ("The demo model is being built: pretraining step 100/400, 1 min 20 s elapsed, "
                              "about 2 min 30 s left.")
    early = demo.progress.read_status(record | {"phase": "training the tokenizer", "step": 0}, False, 1010.0)
    assert early.eta_s is None and early.message.endswith("training the tokenizer, 10 s elapsed.")
    assert demo.progress.read_status(record, complete=True, now=1080.0).state == "ready"
    assert demo.progress.read_status(None, False, 1080.0).state == "absent"
    stale = 1080.0 + demo.progress.STALE_AFTER_S + 1
    assert demo.progress.read_status(record, False, stale).state == "absent"  # a killed build
    failed = demo.progress.read_status(record | {"phase": "failed", "error": "OSError: disk full"}, False, 1080.0)
    assert failed.state == "failed" and "disk full" in failed.message


def test_progress_is_logged_every_few_seconds_and_at_the_last_step(tmp_path: Path) -> None:
    now, lines = [100.0], []
    progress = demo.progress.BuildProgress(tmp_path / "demo", lines.append, clock=lambda: now[0])
    progress.phase("pretraining", total=10)
    for step in range(1, 11):
        now[0] += 1.0
        progress.step(step, 2.0)
    assert [line.split(",")[0] for line in lines] == ["demo: pretraining step 0/10", "demo: pretraining step 5/10",
                                                      "demo: pretraining step 10/10"]
    assert lines[1] == "demo: pretraining step 5/10, 5 s elapsed, about 5 s left"
    record = json.loads(demo.paths.progress_path(tmp_path / "demo").read_text())
    assert (record["step"], record["total"]) == (10, 10)
    progress.done()
    assert not demo.paths.progress_path(tmp_path / "demo").exists()


def test_a_build_waits_for_the_lock_and_takes_what_the_holder_built(tmp_path: Path) -> None:
    """Two processes asking at once share one build: the second waits on the lock, then finds the demo whole."""
    from concurrent.futures import ThreadPoolExecutor

    from filelock import FileLock

    root, messages = tmp_path / "demo", []
    with ThreadPoolExecutor(1) as pool:
        with FileLock(demo.paths.lock_path(root)):
            waiting = pool.submit(build_demo, root, pretrain_steps=3, log=messages.append)
            deadline = time.monotonic() + 30
            while not messages and time.monotonic() < deadline:
                time.sleep(0.05)
            assert messages and "another process is building" in messages[0] and not waiting.done()
            root.mkdir()  # what the holder's build leaves (only its marker is read)
            (root / demo.paths.MARKER).write_text(demo.build.marker_text(3, 0))
        assert waiting.result(timeout=30) == DemoPaths.under(root) and len(messages) == 1  # nothing was built


def test_announcing_a_build_never_overwrites_a_running_one(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    demo.progress.announce_build(root)
    assert (demo.progress.demo_status(tmp_path / "link", root).message
            == "The demo model is being built: starting, 0 s elapsed.")
    demo.progress.BuildProgress(root, lambda _: None).phase("pretraining", total=9)
    demo.progress.announce_build(root)  # a second `mol up` while the first builds
    assert demo.progress.demo_status(tmp_path / "link", root).total == 9
    root.mkdir()
    (root / demo.paths.MARKER).write_text("")
    demo.paths.progress_path(root).unlink()  # built: its record gone, this MOL_HOME's link not made yet
    assert demo.progress.demo_status(tmp_path / "link", root).phase == "registering the corpora"
    demo.cache.link_demo(tmp_path / "link", root)
    assert demo.progress.demo_status(tmp_path / "link", root).state == "ready"


def test_link_points_a_home_at_the_shared_build_replacing_an_old_demo_directory(tmp_path: Path) -> None:
    shared, link = tmp_path / "cache" / "demo-abc", tmp_path / "home" / "demo"
    shared.mkdir(parents=True)
    link.mkdir(parents=True)  # a demo an older version built in place
    (link / "domain.jsonl").write_text("old")
    demo.cache.link_demo(link, shared)
    assert link.is_symlink() and link.resolve() == shared.resolve()
    assert sorted(p.name for p in link.parent.iterdir()) == ["demo"]
    demo.cache.link_demo(link, shared)  # again: nothing to do
    assert link.resolve() == shared.resolve()


def test_stop_ends_a_build_waiting_for_the_lock(tmp_path: Path) -> None:
    from filelock import FileLock

    stop = threading.Event()
    stop.set()  # `mol up` ending
    with FileLock(demo.paths.lock_path(tmp_path / "demo")), pytest.raises(demo.progress.BuildStopped):
        build_demo(tmp_path / "demo", pretrain_steps=1, stop=stop)
    assert not (tmp_path / "demo").exists()
