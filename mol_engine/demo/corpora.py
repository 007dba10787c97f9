"""The demo's corpora, made offline and deterministically: English prose for pretraining and for the held-out
general corpus, and the single-digit addition table as the domain and its QA set.

The English text is the docstrings of a fixed list of pure-Python standard-library modules, so it exists on
every machine without a download; it is identical on machines running the same Python minor version.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import random
import re
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

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


def write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> None:
    """Writes ``rows`` to ``path``, one JSON object a line (keys sorted, UTF-8, ``\\n`` line ends: the same bytes on
    every machine)."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
