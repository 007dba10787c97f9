"""The in-tree demo: a tiny English base model and an arithmetic domain, built offline and deterministically.

``build_demo()`` writes, under one directory::

    model/          Hugging Face directory of a ~1.1M-parameter Llama pre-trained on English prose only
    domain.jsonl    the single-digit addition table, as QA pairs and prose ({"text": ...} per line)
    general.jsonl   held-out English prose of the same kind as the pretraining text
    eval.jsonl      {"question": ..., "answer": ...} for each of its 100 facts (all stated in domain.jsonl)
    DEMO_COMPLETE   written last; its presence means the demo is whole

One build serves every ``MOL_HOME`` of a user: :func:`shared_demo` builds into the user cache
(``$MOL_DEMO_CACHE``, else ``$XDG_CACHE_HOME/mol-studio``, else ``~/.cache/mol-studio``), in ``demo-<key>`` where
the key names what decides the bytes (:func:`demo_key`), and links ``$MOL_HOME/demo`` to it. A build holds a file
lock next to its directory, so two processes asking at once share one build; while it runs it keeps
``.demo-<key>.progress.json`` beside it (phase, step/total, times), which :func:`demo_status` reads for an ETA.

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
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from .threads import use_threads

if TYPE_CHECKING:  # torch, transformers and tokenizers load only when a build runs: a reused build needs none
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
CACHE_ENV = "MOL_DEMO_CACHE"  # the user cache directory of demo builds, overridden (tests point it at a tmp dir)
PROGRESS_EVERY_S = 5.0  # a progress line in the terminal at most this often
PROGRESS_WRITE_S = 1.0  # the progress file rewritten at most this often
STALE_AFTER_S = 600.0  # a progress file not rewritten for this long is a build that died (no step takes that long)

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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
    from transformers import LlamaConfig

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
    on_step: Callable[[int, float], None] = lambda step, loss: None,
) -> float:
    """Trains ``model`` in place on random ``BLOCK_SIZE`` windows of ``token_ids``; returns the final loss.

    ``on_step(step, loss)`` is called after every step. The final loss is the mean over the last tenth of the
    steps (at least one).
    """
    import torch

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
        on_step(step, loss.item())
    model.eval()
    return sum(tail) / len(tail)


# ---------------------------------------------------------------------------------------- cache, progress
def build_versions() -> dict[str, str]:
    """The versions that decide a build's bytes: Python's minor (the corpus), torch, transformers, tokenizers."""
    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}",
            **{package: version(package) for package in ("torch", "transformers", "tokenizers")}}


def demo_key(pretrain_steps: int, seed: int, versions: Mapping[str, str]) -> str:
    """12 hex digits naming one build: the demo's version, its settings and ``versions`` (build_versions())."""
    what = {"demo": DEMO_VERSION, "pretrain_steps": pretrain_steps, "seed": seed, **versions}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def demo_cache_root(env: Mapping[str, str] | None = None) -> Path:
    """``$MOL_DEMO_CACHE``, else ``$XDG_CACHE_HOME/mol-studio``, else ``~/.cache/mol-studio``."""
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "mol-studio"


def shared_demo_dir(pretrain_steps: int | None = None, seed: int = 0, cache_root: Path | None = None) -> Path:
    """Where the shared build of these settings lives: ``<cache root>/demo-<key>``."""
    steps = DEFAULT_PRETRAIN_STEPS if pretrain_steps is None else pretrain_steps
    return (cache_root or demo_cache_root()) / f"demo-{demo_key(steps, seed, build_versions())}"


def lock_path(root: Path) -> Path:
    return root.with_name(f".{root.name}.lock")


def progress_path(root: Path) -> Path:
    return root.with_name(f".{root.name}.progress.json")


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def eta_seconds(step: int, total: int, pretrain_elapsed_s: float) -> float | None:
    """Seconds left at the pace so far (``step`` of ``total`` pretraining steps done in ``pretrain_elapsed_s``);
    None before the first step. Writing the model afterwards takes well under a second."""
    if step < 1 or total < step:
        return None
    return pretrain_elapsed_s / step * (total - step)


@dataclass(frozen=True)
class DemoStatus:
    """Where a demo stands: ``ready``, ``building`` (with phase, step/total, elapsed and ETA), ``failed`` or
    ``absent`` (not built, and no build running)."""

    state: str
    phase: str | None = None
    step: int = 0
    total: int = 0
    elapsed_s: float | None = None
    eta_s: float | None = None
    error: str | None = None

    @property
    def message(self) -> str:
        if self.state == "ready":
            return "The demo model is ready."
        if self.state == "failed":
            return f"The demo build failed: {self.error}"
        if self.state == "absent":
            return "The demo model is not built: `mol up` or `mol demo` builds it."
        return f"The demo model is being built: {self.progress}."

    @property
    def progress(self) -> str:
        """``pretraining step 120/400, 1 min 05 s elapsed, about 3 min 02 s left`` (or the phase and time)."""
        done = f", {format_duration(self.elapsed_s)} elapsed" if self.elapsed_s is not None else ""
        if self.phase == "pretraining" and self.total:
            left = f", about {format_duration(self.eta_s)} left" if self.eta_s is not None else ""
            return f"pretraining step {self.step}/{self.total}{done}{left}"
        return f"{self.phase or 'starting'}{done}"


def read_status(progress: Mapping | None, complete: bool, now: float) -> DemoStatus:
    """The status a build's progress record (None: no record) and completeness give at time ``now`` (pure)."""
    if complete:
        return DemoStatus("ready")
    if not progress or now - progress.get("updated", 0) > STALE_AFTER_S:
        return DemoStatus("absent")
    if progress.get("phase") == "failed":
        return DemoStatus("failed", error=progress.get("error"))
    step, total = int(progress.get("step", 0)), int(progress.get("total", 0))
    pretrain_started = progress.get("pretrain_started")
    eta = eta_seconds(step, total, now - pretrain_started) if pretrain_started else None
    return DemoStatus("building", progress.get("phase"), step, total, now - progress["started"], eta)


def demo_status(link: Path, target: Path, now: float | None = None) -> DemoStatus:
    """The status of the demo a ``MOL_HOME`` uses: ready when ``link`` (``$MOL_HOME/demo``) holds a whole demo;
    building while ``target`` (its shared build) is whole but not linked yet (its corpora being registered);
    else what the build of ``target`` reports in its progress file."""
    if (link / MARKER).is_file():
        return DemoStatus("ready")
    if (target / MARKER).is_file():
        return DemoStatus("building", "registering the corpora")
    try:
        progress = json.loads(progress_path(target).read_text())
    except (OSError, ValueError):
        progress = None
    return read_status(progress, False, time.time() if now is None else now)


def announce_build(root: Path) -> None:
    """Records a build of ``root`` as starting (so :func:`demo_status` says ``building`` from the first moment),
    unless a build's record is already there and live: a running build's progress is never overwritten."""
    path = progress_path(root)
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = None
    if read_status(current, False, time.time()).state == "building":
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    BuildProgress(root, lambda _: None).phase("starting")


class BuildStopped(Exception):
    """The build was asked to stop (``mol up`` ending while it builds in the background)."""


class BuildProgress:
    """A build's progress, kept in its progress file (for every process that shows it) and logged as one line
    every :data:`PROGRESS_EVERY_S` seconds, and at each new phase; raises :class:`BuildStopped` at the next phase
    or step once ``stop`` is set."""

    def __init__(self, root: Path, log: Callable[[str], None], clock: Callable[[], float] = time.time,
                 stop: threading.Event | None = None):
        self.path, self.log, self.clock, self.stop = progress_path(root), log, clock, stop
        now = clock()
        self.record: dict = {"phase": "starting", "step": 0, "total": 0, "started": now, "updated": now,
                             "pid": os.getpid()}
        self.written = self.logged = float("-inf")

    def phase(self, name: str, total: int = 0) -> None:
        self._check_stop()
        self.record |= {"phase": name, "step": 0, "total": total}
        if name == "pretraining":
            self.record["pretrain_started"] = self.clock()
        self._publish(force=True)

    def step(self, step: int, loss: float) -> None:
        self._check_stop()
        self.record |= {"step": step, "loss": loss}
        self._publish(force=step == self.record["total"])

    def failed(self, error: BaseException) -> None:
        self.record |= {"phase": "failed", "error": f"{type(error).__name__}: {error}"}
        self._publish(force=True)

    def done(self) -> None:
        self.path.unlink(missing_ok=True)

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise BuildStopped("the demo build was stopped")

    def _publish(self, force: bool) -> None:
        now = self.clock()
        self.record["updated"] = now
        if force or now - self.written >= PROGRESS_WRITE_S:
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.record))
            os.replace(tmp, self.path)
            self.written = now
        if force or now - self.logged >= PROGRESS_EVERY_S:
            self.log(f"demo: {read_status(self.record, False, now).progress}")
            self.logged = now


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


def _build_into(root: Path, pretrain_steps: int, seed: int, log: Callable[[str], None],
                progress: BuildProgress) -> None:
    import torch
    from transformers import LlamaForCausalLM

    paths = DemoPaths.under(root)
    progress.phase("writing the corpora")
    pretrain_docs, general_docs = split_general(general_documents())
    _write_jsonl(paths.general, ({"text": d} for d in general_docs))
    _write_jsonl(paths.domain, ({"text": d} for d in domain_documents(seed)))
    _write_jsonl(paths.eval, eval_pairs(seed))
    log(f"corpora: {len(pretrain_docs)} pretraining and {len(general_docs)} general documents")

    progress.phase("training the tokenizer")
    tokenizer = build_tokenizer(pretrain_docs)
    encodings = tokenizer.backend_tokenizer.encode_batch(pretrain_docs)
    stream = [t for enc in encodings for t in [*enc.ids, tokenizer.eos_token_id]]
    config = tiny_llama_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    threads = use_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        params = sum(p.numel() for p in model.parameters())
        log(f"pretraining a {params / 1e6:.2f}M-parameter Llama on {len(stream)} tokens, {pretrain_steps} steps, "
            f"{threads} torch thread(s) (MOL_TORCH_THREADS sets them)")
        progress.phase("pretraining", total=pretrain_steps)
        loss = pretrain(model, stream, pretrain_steps, seed=seed, on_step=progress.step)
    log(f"pretrained base model: final loss {loss:.3f} (mean of the last tenth of the steps)")
    progress.phase("saving the model")
    model.save_pretrained(paths.model, safe_serialization=True)
    tokenizer.save_pretrained(paths.model)
    # Name the class every transformers release knows (v5 alone knows "TokenizersBackend").
    tok_config = paths.model / "tokenizer_config.json"
    data = json.loads(tok_config.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _acquire(lock: FileLock, root: Path, log: Callable[[str], None], stop: threading.Event | None) -> None:
    """Takes the build lock of ``root``, saying so when another process holds it (its build is then shared)."""
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        log(f"demo: another process is building {root}; waiting for it (progress in {progress_path(root)})")
    while True:
        if stop is not None and stop.is_set():
            raise BuildStopped("stopped waiting for the demo build")
        try:
            lock.acquire(timeout=1)
            return
        except Timeout:
            continue


def build_demo(
    directory: str | Path | None = None,
    *,
    pretrain_steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> DemoPaths:
    """The paths of a complete demo under ``directory``, built if needed; without ``directory``, the shared build
    linked from :func:`default_demo_dir` (:func:`shared_demo`).

    A demo built earlier with the same ``pretrain_steps`` and ``seed`` is reused as is; an incomplete one or
    one built with other settings is replaced. The build happens in a sibling temporary directory renamed
    into place, so an interrupted build never leaves a partial demo behind, and under a file lock beside the
    directory, so concurrent callers share one build (the later ones wait, then find it complete). Setting
    ``stop`` ends a build (or the wait) at its next step with :class:`BuildStopped`, leaving nothing behind.
    """
    log = log or (lambda _: None)
    steps = DEFAULT_PRETRAIN_STEPS if pretrain_steps is None else pretrain_steps
    if steps < 1:
        raise ValueError("pretrain_steps must be at least 1")
    if directory is None:
        return shared_demo(default_demo_dir(), pretrain_steps=steps, seed=seed, log=log)
    root = Path(directory)
    marker = _marker_text(steps, seed)
    if _is_complete(root, marker):
        return DemoPaths.under(root)

    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(root))
    _acquire(lock, root, log, stop)
    try:
        if not _is_complete(root, marker):  # else another process built it while we waited
            _build_locked(root, steps, seed, marker, log, stop)
    finally:
        lock.release()
    return DemoPaths.under(root)


def _build_locked(root: Path, steps: int, seed: int, marker: str, log: Callable[[str], None],
                  stop: threading.Event | None) -> None:
    for stale in root.parent.glob(f".{root.name}.building-*"):  # left by a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    started = time.monotonic()
    progress = BuildProgress(root, log, stop=stop)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        _build_into(tmp, steps, seed, log, progress)
        (tmp / MARKER).write_text(marker)
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and some writers create owner-only modes
            path.chmod(0o755 if path.is_dir() else 0o644)
        if root.exists():  # partial, or built with other settings
            shutil.rmtree(root)
        os.rename(tmp, root)
    except BuildStopped:
        progress.done()  # no build runs now: the next start begins afresh
        raise
    except BaseException as err:
        progress.failed(err)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress.done()
    log(f"demo built in {root} in {format_duration(time.monotonic() - started)}")


def link_demo(link: Path, target: Path) -> None:
    """Points ``link`` (``$MOL_HOME/demo``) at ``target`` in one step; a directory there (a demo built in place by
    an older version) is moved aside and removed."""
    if link.is_symlink() and link.readlink() == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():
        aside = link.with_name(f".{link.name}.old-{os.getpid()}")
        os.rename(link, aside)
        shutil.rmtree(aside, ignore_errors=True)
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


def shared_demo(
    link: Path,
    *,
    pretrain_steps: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    cache_root: Path | None = None,
    stop: threading.Event | None = None,
) -> DemoPaths:
    """The user's shared demo build for these settings (built if needed, see :func:`build_demo`), with ``link``
    pointing at it; the paths returned are those of the build itself."""
    paths = build_demo(shared_demo_dir(pretrain_steps, seed, cache_root), pretrain_steps=pretrain_steps, seed=seed,
                       log=log, stop=stop)
    link_demo(link, paths.root)
    return paths
