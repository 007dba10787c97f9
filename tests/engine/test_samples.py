"""Sample generations during training: a ``samples`` event at every evaluation (the base's at step 0), greedy as
the playground's generate.py on the same weights, prompts from the spec, a file or the data, sizes bounded."""

import json

import pytest
from pydantic import ValidationError

from mol_engine.callbacks import Callback
from mol_engine.data import DataError
from mol_engine.generate import ModelSource, Sampling, encode_prompt, generate, load_model
from mol_engine.samples import EVENT_COMPLETION_CHARS, EVENT_PROMPT_CHARS, Sample, read_prompts, samples_event
from mol_engine.spec import MAX_SAMPLE_PROMPTS
from mol_engine.train import train


class Events(Callback):
    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_event(self, event: dict) -> None:
        self.events.append(event)

    def samples(self) -> dict[int, list[dict]]:
        return {e["step"]: e["samples"] for e in self.events if e["kind"] == "samples"}


def greedy(model_path, prompts: list[str], max_tokens: int) -> list[str]:
    """The playground's greedy completions of ``prompts`` by the model (or checkpoint) at ``model_path``."""
    loaded = load_model(ModelSource(model_path))
    return [generate(loaded, encode_prompt(loaded, p, max_tokens), Sampling(max_tokens, temperature=0.0)).text
            for p in prompts]


def test_each_evaluation_completes_the_default_prompts_as_generate_does_the_first_on_the_base(make_spec, tmp_path,
                                                                                               corpora):
    events = Events()
    spec = make_spec(max_steps=4, eval_every=2, save_every=4, sample_max_tokens=8, lr=0.05)
    train(spec, tmp_path, [events])
    samples = events.samples()
    assert sorted(samples) == [0, 2, 4]
    prompts = [s["prompt"] for s in samples[4]]
    # 2 QA questions as the evaluation asks them, then 2 prefixes of held-out general text
    assert prompts[:2] == ["Question: What is 1 plus 2?\nAnswer:", "Question: What is 3 plus 4?\nAnswer:"]
    general_text = corpora["general"].read_text()
    assert len(prompts) == 4 and all(p[:8] in general_text for p in prompts[2:])
    assert [s["prompt"] for s in samples[0]] == prompts
    base, trained = ([s["completion"] for s in samples[step]] for step in (0, 4))
    assert base == greedy(spec.base_model, prompts, 8)
    assert trained == greedy(tmp_path / "checkpoints" / "step-4", prompts, 8)
    assert base != trained  # training changed them: step 0's are the base's, not a copy of the last


def test_an_empty_list_disables_samples(make_spec, tmp_path):
    events = Events()
    train(make_spec(max_steps=2, eval_every=2, sample_prompts=[]), tmp_path, [events])
    assert events.samples() == {} and any(e["kind"] == "eval" for e in events.events)


def test_prompts_from_a_file_and_the_event_stays_bounded(make_spec, tmp_path):
    long_prompt = "the cat sat on the mat " * 170  # under 4000 chars, over 256 tokens (the context)
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Once upon"}) + "\n\n" + json.dumps({"prompt": long_prompt}) + "\n")
    events = Events()
    train(make_spec(max_steps=1, eval_every=1, sample_prompts=str(path), sample_max_tokens=4), tmp_path / "run",
          [events])
    first, second = events.samples()[1]
    assert first["prompt"] == "Once upon"
    assert len(second["prompt"]) == EVENT_PROMPT_CHARS and second["prompt"].endswith(long_prompt[-20:])


def test_a_samples_event_is_bounded_whatever_the_text():
    event = samples_event(3, [Sample("p" * 10_000, "c" * 10_000)] * MAX_SAMPLE_PROMPTS)
    shown = event["samples"][0]
    assert len(shown["prompt"]) == EVENT_PROMPT_CHARS and shown["prompt"].startswith("…")
    assert len(shown["completion"]) == EVENT_COMPLETION_CHARS and shown["completion"].endswith("…")
    assert len(json.dumps(event)) < MAX_SAMPLE_PROMPTS * (EVENT_PROMPT_CHARS + EVENT_COMPLETION_CHARS) * 2
    assert "base" in samples_event(0, [])["message"] and "step 3" in event["message"]


@pytest.mark.parametrize(("rows", "problem"), [
    ([{"prompt": "a"}, {"text": "b"}], "line 2: missing field 'prompt'"),
    ([{"prompt": "  "}], "line 1: field 'prompt' is empty"),
    ([{"prompt": "a"}] * (MAX_SAMPLE_PROMPTS + 1), f"more than {MAX_SAMPLE_PROMPTS} prompts"),
    ([], "no prompts found"),
])
def test_a_bad_prompts_file_names_its_problem(tmp_path, rows, problem):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=problem):
        read_prompts(path)


@pytest.mark.parametrize("fields", [
    {"sample_prompts": ["x"] * (MAX_SAMPLE_PROMPTS + 1)}, {"sample_prompts": [""]}, {"sample_max_tokens": 0},
    {"sample_max_tokens": 257},
])
def test_the_spec_bounds_prompts_and_tokens(make_spec, fields):
    with pytest.raises(ValidationError):
        make_spec(**fields)


def test_a_prompts_reference_is_resolved_and_a_list_kept(make_spec):
    assert make_spec(sample_prompts="ds_1").resolve_paths(lambda ref: f"/data/{ref}").sample_prompts == "/data/ds_1"
    assert make_spec(sample_prompts=["hi"]).resolve_paths(lambda ref: f"/data/{ref}").sample_prompts == ["hi"]
