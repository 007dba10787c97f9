"""The in-tree demo: a tiny English base model and an arithmetic domain, built offline and deterministically.

Its modules, by job:

    paths.py      where a demo's parts live (DemoPaths), and the lock and progress files beside a build
    corpora.py    the English prose (standard-library docstrings) and the addition-table domain and QA set
    tokenizer.py  the byte-level BPE tokenizer trained on the pretraining text
    model.py      the tiny Llama, initialised from the seed
    pretrain.py   its pretraining, through the engine's train() (method domain_only, on the CPU)
    cache.py      the user cache of builds, keyed by what decides their bytes, linked from $MOL_HOME/demo
    progress.py   a build's progress record, read back as a status with an ETA
    build.py      build_demo(): all of the above into one directory, atomically, under a file lock

Importing it loads neither torch nor transformers: a reused build needs neither.
"""

from .build import build_demo, shared_demo
from .cache import build_versions, demo_cache_root, demo_key, link_demo, shared_demo_dir
from .corpora import general_documents
from .model import tiny_llama_config
from .paths import MARKER, DemoPaths, default_demo_dir
from .pretrain import BATCH_SIZE, BLOCK_SIZE, DEFAULT_PRETRAIN_STEPS
from .progress import BuildStopped, DemoStatus, announce_build, demo_status, format_duration
from .tokenizer import VOCAB_SIZE, build_tokenizer

__all__ = [
    "BATCH_SIZE", "BLOCK_SIZE", "DEFAULT_PRETRAIN_STEPS", "MARKER", "VOCAB_SIZE", "BuildStopped", "DemoPaths",
    "DemoStatus", "announce_build", "build_demo", "build_tokenizer", "build_versions", "default_demo_dir",
    "demo_cache_root", "demo_key", "demo_status", "format_duration", "general_documents", "link_demo",
    "shared_demo", "shared_demo_dir", "tiny_llama_config",
]
