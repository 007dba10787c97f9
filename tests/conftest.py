"""Shared fixtures: a tiny Llama built from a config (a few hundred K parameters) and small corpora."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MOL_TORCH_THREADS", "1")  # one count for every run (mol_engine/threads.py): the same numbers

WORDS = ("the river model light north stone garden window paper quiet music winter table letter "
         "small green open under over after before city morning evening story road").split()


def general_docs(n: int, seed: int = 1) -> list[str]:
    """Deterministic English-like documents."""
    rng = random.Random(seed)
    return [" ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "."
                     for _ in range(rng.randint(2, 5))) for _ in range(n)]


def arithmetic_docs(n: int, seed: int = 2) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        docs.append(f"Question: What is {a} plus {b}?\nAnswer: {a + b}")
    return docs


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory) -> Path:
    """Demo builds of this session (`mol up`'s shared cache, MOL_DEMO_CACHE): never the user's ~/.cache, and
    shared by the session's `mol up` runs, as by a user's MOL_HOMEs."""
    path = tmp_path_factory.mktemp("demo-cache")
    os.environ["MOL_DEMO_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def postgres_url():
    """A scratch PostgreSQL database on 127.0.0.1:5432 (started by .ci/run), dropped at the end."""
    import sqlalchemy

    name = f"mol_test_{os.getpid()}"
    admin = sqlalchemy.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                                     isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised ~100K-parameter Llama with a byte-level BPE tokenizer, saved as an HF directory."""
    import torch
    from transformers import LlamaForCausalLM

    from mol_engine.demo import build_tokenizer, tiny_llama_config

    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer(general_docs(200) + arithmetic_docs(50), vocab_size=320)
    config = tiny_llama_config(
        len(tokenizer), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> dict[str, Path]:
    path = tmp_path_factory.mktemp("corpora")
    qa = [{"question": f"What is {a} plus {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 1), (2, 2)]]
    return {
        "domain": write_jsonl(path / "domain.jsonl", [{"text": t} for t in arithmetic_docs(120)]),
        "general": write_jsonl(path / "general.jsonl", [{"text": t} for t in general_docs(120)]),
        "eval": write_jsonl(path / "eval.jsonl", qa),
    }


@pytest.fixture
def make_spec(tiny_model_dir, corpora):
    """JobSpec factory: a tiny, fast MoL job on the fixtures; keyword arguments override fields."""
    from mol_engine.spec import JobSpec

    def make(**overrides) -> JobSpec:
        fields = dict(
            name="tiny", base_model=str(tiny_model_dir), domain_data=[str(corpora["domain"])],
            general_data=[str(corpora["general"])], eval_data=str(corpora["eval"]), seq_len=32, batch_size=4,
            lr=3e-3, warmup_steps=1, max_steps=6, eval_every=3, save_every=3, eval_batches=2, qa_max_new_tokens=3,
            sample_max_tokens=4, seed=0,  # sample generations run at every evaluation: short ones keep tests fast
        )
        return JobSpec(**(fields | overrides))

    return make
