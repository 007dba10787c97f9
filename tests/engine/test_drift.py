"""The forgetting drill-down: per-token KL of held-out general passages, summing to each passage's KL and, over
all passages, to eval/general_kl; the drift event's top passages and heat strip; none at step 0 or without text."""

import math

import pytest

from mol_engine.callbacks import Callback
from mol_engine.drift import STRIP_TOKENS, TOP_N, PassageKL, drift_event, heat_strip, passage_kls
from mol_engine.evaluate import heldout_metrics
from mol_engine.train import setup_run, train, train_step


class Events(Callback):
    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_event(self, event: dict) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind]


def test_per_token_kl_sums_to_each_passage_and_to_the_held_out_kl(make_spec, tmp_path):
    run = setup_run(make_spec(lr=0.05, sample_prompts=[]), tmp_path)
    for step in (1, 2, 3):
        train_step(run, step)
    run.model.eval()
    blocks = run.general.heldout.select(range(min(8, len(run.general.heldout))))
    options = dict(batch_size=4, eos_id=run.eos_id, chunk=7, kl_direction="reverse", device=run.device)  # 7: chunks
    passages = passage_kls(run.model, run.reference, blocks, **options)
    held_out = heldout_metrics(run.model, domain=run.domain.heldout.select([0]), general=blocks,
                               reference=run.reference, **options)["eval/general_kl"]
    assert len(passages) == len(blocks) and held_out > 1e-4
    counts = [sum(v is not None for v in p.token_kl) for p in passages]
    overall = sum(p.kl * n for p, n in zip(passages, counts, strict=True)) / sum(counts)
    assert overall == pytest.approx(held_out, rel=1e-4)
    for p, ids in zip(passages, blocks.input_ids, strict=True):
        assert p.token_ids == ids.tolist()[: len(p.token_ids)] and len(p.token_kl) == len(p.token_ids)
        assert p.token_kl[0] is None  # no loss predicts a passage's first token
        known = [v for v in p.token_kl if v is not None]
        assert all(v >= -1e-6 for v in known) and p.kl == pytest.approx(sum(known) / len(known))


def test_a_run_reports_the_top_passages_and_a_strip_after_step_0(make_spec, tmp_path):
    events = Events()
    train(make_spec(max_steps=2, eval_every=2, sample_prompts=[], lr=0.05), tmp_path, [events])
    (drift,) = events.of("drift")  # step 0 is the base: nothing drifted yet
    assert drift["step"] == 2 and "step 2" in drift["message"]
    kls = [p["kl"] for p in drift["passages"]]
    assert 1 <= len(kls) <= TOP_N and kls == sorted(kls, reverse=True) and kls[0] > 0
    strip = drift["strip"]
    assert strip["index"] == drift["passages"][0]["index"] and len(strip["pieces"]) == len(strip["kl"])
    known = [v for v in strip["kl"] if v is not None]
    assert sum(known) / len(known) == pytest.approx(kls[0])  # the strip's token-weighted KL is the passage's
    assert all(len(p["text"]) <= 300 for p in drift["passages"])


def test_no_drift_without_general_text(make_spec, tmp_path):
    events = Events()
    train(make_spec(method="domain_only", general_data=[], max_steps=1, eval_every=1, sample_prompts=[]), tmp_path,
          [events])
    assert events.of("drift") == [] and events.of("eval")


class Pieces:
    """A tokenizer stand-in: token i decodes to 't<i> '."""

    def decode(self, ids, **kwargs) -> str:
        return "".join(f"t{i} " for i in ids)


def test_a_long_passage_shows_its_hottest_window_and_the_event_is_bounded():
    n = STRIP_TOKENS * 3
    kl = [None] + [5.0 if 400 <= i < 420 else 0.01 for i in range(1, n)]
    passage = PassageKL(0, list(range(n)), kl)
    strip = heat_strip(passage, Pieces())
    assert len(strip["pieces"]) == STRIP_TOKENS and strip["start"] <= 400 and strip["start"] + STRIP_TOKENS >= 420
    assert strip["pieces"][0] == f"t{strip['start']} " and strip["kl"] == kl[strip["start"]:][:STRIP_TOKENS]
    cold = [PassageKL(i, [1, 2], [None, 0.001 * i]) for i in range(1, 9)]
    event = drift_event(4, [*cold, passage], Pieces())
    assert [p["index"] for p in event["passages"]] == [0, 8, 7, 6, 5] and len(event["passages"]) == TOP_N
    assert len(event["passages"][0]["text"]) == 300 and event["passages"][0]["text"].endswith("…")
    assert math.isclose(event["passages"][0]["kl"], passage.kl)
