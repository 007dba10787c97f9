"""The in-tree demo: a tiny English base model and an arithmetic domain, built offline and deterministically.

``build_demo()`` writes, under one directory::

    model/          Hugging Face directory of a ~1.1M-parameter Llama pre-trained on English prose only
    domain.jsonl    the single-digit addition table, as QA pairs and prose ({"text": ...} per line)
    general.jsonl   held-out English prose of the same kind as the pretraining text
    eval.jsonl      {"question": ..., "answer": ...} for each of its 100 facts (all stated in domain.jsonl)
    DEMO_COMPLETE   written last; its presence means the demo is whole

The English text is the docstrings of a fixed list of pure-Python standard-library modules, so it exists on
every machine without a download; it is identical on machines running the same Python minor version.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DEMO_VERSION = "mol-demo-1"
MARKER = "DEMO_COMPLETE"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
VOCAB_SIZE = 2048
DEFAULT_PRETRAIN_STEPS = 400
BLOCK_SIZE = 128
BATCH_SIZE = 16
MAX_OPERAND = 9  # the single-digit addition table: 100 facts, all of them in eval.jsonl
DOMAIN_ROUNDS = 30
QA_TEMPLATE = "Question: {question}\nAnswer: {answer}"  # JobSpec.qa_prompt followed by " answer"

# Pure-Python modules present in every CPython >= 3.10 whose definitions do not depend on the platform
# or on optional extensions (ssl, sqlite3, readline, ...), so the corpus depends only on the Python version.
STDLIB_MODULES = (
    "abc argparse ast base64 bisect calendar cmd codecs codeop collections colorsys configparser "
    "contextlib copy csv dataclasses difflib email.message email.parser email.utils enum filecmp "
    "fileinput fnmatch fractions functools getopt gettext glob graphlib heapq html.parser http.cookiejar "
    "inspect ipaddress json json.decoder json.encoder keyword linecache logging logging.handlers mailbox "
    "mimetypes ntpath numbers operator optparse pathlib pickletools pkgutil plistlib posixpath pprint "
    "queue quopri random re reprlib runpy sched secrets shelve shlex stat statistics string symtable "
    "tabnanny tarfile tempfile textwrap threading timeit tokenize trace traceback types typing "
    "unittest.case unittest.mock urllib.parse uuid warnings wave weakref xml.dom.minidom "
    "xml.etree.ElementTree zipapp zipfile"
).split()

_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()


@dataclass(frozen=True)
class DemoPaths:
    """Where the parts of a built demo live."""

    root: Path
    model: Path
    domain: Path
    general: Path
    eval: Path

    @classmethod
    def under(cls, root: str | Path) -> DemoPaths:
        """The paths of a demo rooted at ``root`` (nothing is checked or built)."""
        root = Path(root)
        return cls(root, root / "model", root / "domain.jsonl", root / "general.jsonl", root / "eval.jsonl")


def default_demo_dir() -> Path:
    """``$MOL_HOME/demo``, or ``.mol/demo`` when ``MOL_HOME`` is unset."""
    return Path(os.environ.get("MOL_HOME", ".mol")) / "demo"


# ---------------------------------------------------------------------------------------------- corpora
def _clean(doc: str) -> str:
    lines = [line.rstrip() for line in inspect.cleandoc(doc).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _documented(module: object, name: str) -> list[object]:
    """The module, then its own classes and functions, then their methods, in sorted-name order."""
    found: list[object] = [module]
    for _, value in sorted(vars(module).items()):
        if getattr(value, "__module__", None) != name:
            continue
        if inspect.isfunction(value):
            found.append(value)
        elif inspect.isclass(value):
            found.append(value)
            for _, attr in sorted(vars(value).items()):
                attr = getattr(attr, "__func__", attr)  # staticmethod / classmethod
                if inspect.isfunction(attr) or isinstance(attr, property):
                    found.append(attr)
    return found


def general_documents() -> list[str]:
    """Sorted, deduplicated English docstrings of :data:`STDLIB_MODULES` (at least 8 words each)."""
    if sys.flags.optimize >= 2:
        raise RuntimeError("the demo's English corpus is made of docstrings, which python -OO strips")
    docs: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(STDLIB_MODULES):
            for obj in _documented(importlib.import_module(name), name):
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str) and len((text := _clean(doc)).split()) >= 8:
                    docs.add(text)
    return sorted(docs)


def split_general(docs: Iterable[str], general_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """(pretraining documents, held-out general documents): a split by content hash, stable per document."""
    pretrain: list[str] = []
    general: list[str] = []
    for doc in docs:
        bucket = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:4], "big") / 2**32
        (general if bucket < general_fraction else pretrain).append(doc)
    return pretrain, general


def number_words(n: int) -> str:
    """English words for ``0 <= n < 20`` ("twelve"); sums of single digits stay below 19."""
    return _WORDS[n]


def addition_facts(max_operand: int = MAX_OPERAND) -> list[tuple[int, int, int]]:
    """Every ``(a, b, a + b)`` with ``0 <= a, b <= max_operand``, in order."""
    return [(a, b, a + b) for a in range(max_operand + 1) for b in range(max_operand + 1)]


def fact_question(a: int, b: int) -> str:
    """The eval question for ``a + b``, without the "Question:" prefix ("What is 7 plus 5?")."""
    return f"What is {a} plus {b}?"


def _qa(a: int, b: int, c: int) -> str:
    return QA_TEMPLATE.format(question=fact_question(a, b), answer=c)


_PROSE = (
    "{A} plus {B} equals {C}.",
    "The sum of {a} and {b} is {c}.",
    "If you add {b} to {a}, you get {c}.",
    "{a} + {b} = {c}",
    "Adding {a} and {b} gives {c}.",
)


def _statement(rng: random.Random, a: int, b: int, c: int) -> str:
    words = {"A": number_words(a).capitalize(), "B": number_words(b), "C": number_words(c)}
    return rng.choice(_PROSE).format(a=a, b=b, c=c, **words)


def domain_documents(seed: int = 0, max_operand: int = MAX_OPERAND, rounds: int = DOMAIN_ROUNDS) -> list[str]:
    """The addition table as documents, in a seeded order: per fact one QA document (JobSpec template) and
    one prose statement, then ``rounds`` shuffles of the table cut into worksheets of 1-5 facts, each a QA
    pair or a statement, so every fact recurs in many contexts (a fact, not a block, is what is learnt)."""
    rng = random.Random(f"domain-{seed}")
    facts = addition_facts(max_operand)
    docs = [_qa(*fact) for fact in facts] + [_statement(rng, *fact) for fact in facts]
    for _ in range(rounds):
        shuffled, start = rng.sample(facts, len(facts)), 0
        while start < len(shuffled):
            size = rng.randint(1, 5)
            items = [_qa(*f) if rng.random() < 0.7 else _statement(rng, *f) for f in shuffled[start : start + size]]
            docs.append("\n\n".join(items))
            start += size
    rng.shuffle(docs)
    return docs


def eval_pairs(seed: int = 0, max_operand: int = MAX_OPERAND) -> list[dict[str, str]]:
    """Every addition fact of domain.jsonl as a ``{"question", "answer"}`` pair, in a seeded order."""
    facts = random.Random(f"eval-{seed}").sample(addition_facts(max_operand), (max_operand + 1) ** 2)
    return [{"question": fact_question(a, b), "answer": str(c)} for a, b, c in facts]


# ------------------------------------------------------------------------------------ tokenizer, model
def build_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` that round-trips any text and adds no BOS/EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=1024,
    )


def tiny_llama_config(
    vocab_size: int,
    *,
    bos_token_id: int = 0,
    eos_token_id: int = 0,
    pad_token_id: int | None = 1,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 352,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = True,
) -> LlamaConfig:
    """A small Llama config (about 1.1M parameters at the defaults and a 2048 vocabulary, embeddings tied)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        attention_dropout=0.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def pretrain(
    model: LlamaForCausalLM,
    token_ids: Sequence[int],
    steps: int,
    *,
    seed: int = 0,
    lr: float = 6e-3,
    log: Callable[[str], None] = lambda _: None,
) -> float:
    """Trains ``model`` in place on random ``BLOCK_SIZE`` windows of ``token_ids``; returns the final loss.

    The final loss is the mean over the last tenth of the steps (at least one).
    """
    stream = torch.tensor(token_ids, dtype=torch.long)
    if len(stream) <= BLOCK_SIZE:
        raise ValueError("pretraining text is shorter than one block")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)
    tail: list[float] = []
    model.train()
    for step in range(1, steps + 1):
        scale = step / warmup if step <= warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * min(scale, 1.0)
        starts = torch.randint(len(stream) - BLOCK_SIZE, (BATCH_SIZE,), generator=generator)
        batch = torch.stack([stream[s : s + BLOCK_SIZE] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > steps - max(1, steps // 10):
            tail.append(loss.item())
        if step % max(1, steps // 10) == 0 or step == steps:
            log(f"pretraining base model: step {step}/{steps}, loss {loss.item():.3f}")
    model.eval()
    return sum(tail) / len(tail)


# ---------------------------------------------------------------------------------------------- build
def _write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _marker_text(pretrain_steps: int, seed: int) -> str:
    return json.dumps({"version": DEMO_VERSION, "pretrain_steps": pretrain_steps, "seed": seed}) + "\n"


def _is_complete(root: Path, marker: str) -> bool:
    try:
        return (root / MARKER).read_text() == marker
    except OSError:
        return False


def _build_into(root: Path, pretrain_steps: int, seed: int, log: Callable[[str], None]) -> None:
    paths = DemoPaths.under(root)
    pretrain_docs, general_docs = split_general(general_documents())
    _write_jsonl(paths.general, ({"text": d} for d in general_docs))
    _write_jsonl(paths.domain, ({"text": d} for d in domain_documents(seed)))
    _write_jsonl(paths.eval, eval_pairs(seed))
    log(f"corpora: {len(pretrain_docs)} pretraining and {len(general_docs)} general documents")

    tokenizer = build_tokenizer(pretrain_docs)
    encodings = tokenizer.backend_tokenizer.encode_batch(pretrain_docs)
    stream = [t for enc in encodings for t in [*enc.ids, tokenizer.eos_token_id]]
    config = tiny_llama_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        log(f"pretraining a {params / 1e6:.2f}M-parameter Llama on {len(stream)} tokens")
        loss = pretrain(model, stream, pretrain_steps, seed=seed, log=log)
    log(f"pretrained base model: final loss {loss:.3f} (mean of the last tenth of the steps)")
    model.save_pretrained(paths.model, safe_serialization=True)
    tokenizer.save_pretrained(paths.model)
    # Name the class every transformers release knows (v5 alone knows "TokenizersBackend").
    tok_config = paths.model / "tokenizer_config.json"
    data = json.loads(tok_config.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_demo(
    directory: str | Path | None = None,
    *,
    pretrain_steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> DemoPaths:
    """The paths of a complete demo under ``directory`` (default :func:`default_demo_dir`), built if needed.

    A demo built earlier with the same ``pretrain_steps`` and ``seed`` is reused as is; an incomplete one or
    one built with other settings is replaced. The build happens in a sibling temporary directory renamed
    into place, so an interrupted build never leaves a partial demo behind.
    """
    log = log or (lambda _: None)
    steps = DEFAULT_PRETRAIN_STEPS if pretrain_steps is None else pretrain_steps
    if steps < 1:
        raise ValueError("pretrain_steps must be at least 1")
    root = Path(directory) if directory is not None else default_demo_dir()
    marker = _marker_text(steps, seed)
    if _is_complete(root, marker):
        return DemoPaths.under(root)

    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        _build_into(tmp, steps, seed, log)
        (tmp / MARKER).write_text(marker)
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and some writers create owner-only modes
            path.chmod(0o755 if path.is_dir() else 0o644)
        if root.exists() and not _is_complete(root, marker):  # partial, or built with other settings
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root, marker):  # anything but a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"demo built in {root} in {time.monotonic() - started:.0f}s")
    return DemoPaths.under(root)
