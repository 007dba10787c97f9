"""bench/api_load.py keeps working: --quick runs every phase on PostgreSQL, no slow client gets a 5xx, streamed
completions with 1 and 8 clients at once all run to the end with first-token and tokens/s figures, and the abuse mix
is refused as the bounds say while another owner's work goes on."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "api_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("api_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_load_serves_slow_clients_submitters_streams_and_completions(capsys):
    assert load_bench().main(["--quick"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["slow_clients_5xx"] == 0 and result["slow_clients_failed"] == 0, result["slow_failures_sample"]
    assert result["slow_clients_connected"] == result["slow_clients"] == 8
    assert result["slow_uploads_completed"] == 4  # two multipart, two in parts, each trickled in
    assert result["clients_5xx"] == 0 and result["submissions"] > 0 and result["submit_p99_ms"] > 0
    assert result["sse_streams"] == result["sse_streams_tried"] == 20
    assert 0 <= result["upload_peak_rss_growth_mb"] < 64 and result["database"] == "postgresql"
    assert result["completion_model"] == "tiny" and result["completion_tokens"] == 8
    assert [c["clients"] for c in result["completions"]] == [1, 8]
    for run in result["completions"]:
        assert run["completed"] == run["clients"], run["failures_sample"]  # every stream ran to max_tokens
        assert 0 < run["first_token_p50_ms"] <= run["first_token_p95_ms"] < 30_000
        assert run["tokens_per_s_per_client"] > 0 and run["tokens_per_s_all"] > 0

    outcomes = result["abuse_outcomes"]
    assert result["abuse_5xx"] == 0, outcomes
    assert set(outcomes["oversized_anonymous_length"]) == set(outcomes["oversized_anonymous_chunked"]) == {"401"}
    assert set(outcomes["oversized_token_length"]) == set(outcomes["oversized_token_chunked"]) == {"413"}
    assert set(outcomes["prompt_900k_chars"]) == {"422"} and set(outcomes["prompt_2000k_chars"]) == {"413"}
    assert outcomes["side_tasks"] == {"202": 4, "429": 4}  # MOL_SIDE_TASKS_PER_OWNER of 8
    assert outcomes["webhook_registrations"] == {"201": 20, "409": 1} == {"201": result["abuse_dead_webhooks"],
                                                                           "409": 1}
    assert result["abuse_api_peak_rss_growth_mb"] < 100
    delivered, cancelled = map(int, result["other_owner_webhooks_delivered"].split("/"))
    assert delivered == cancelled > 0
    assert result["other_owner_training_status"] in ("running", "succeeded")
