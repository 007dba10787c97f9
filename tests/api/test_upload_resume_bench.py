"""bench/upload_resume.py keeps working: a real connection cut mid-part, then resumed, gives the same sha256."""

import hashlib
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "upload_resume.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("upload_resume", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cut_and_resumed_upload_gives_the_same_sha256(tmp_path):
    bench = load_bench()
    size, part = 2 * 2**20, 2**18
    result = bench.upload_resume_ok(size, part, workdir=tmp_path)
    assert result["upload_resume_ok"] is True and result["bytes"] == size
    cut = bench.middle_of_middle_part(size, part)
    assert cut % part == part // 2  # the connection dropped inside a part
    assert result["bytes_sent_resumed"] == size + part // 2  # resumed: only the cut part was sent again
    corpus = (tmp_path / "corpus.jsonl").read_bytes()
    assert len(corpus) == size and corpus.endswith(b'"}\n')
    assert hashlib.sha256(corpus).hexdigest() == bench.write_corpus(tmp_path / "again.jsonl", size)
