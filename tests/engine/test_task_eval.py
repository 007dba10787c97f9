"""Task evaluation with lm-eval: its figures on the tiny model against the same computed by hand with torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mol_cli.main import main
from mol_engine.data import DataError
from mol_engine.export import export_checkpoint
from mol_engine.task_eval import TaskError, check_task_file, evaluate_task, load_model, write_task_config
from mol_engine.train import train

QUESTIONS = [("What is 1 plus 2?", ["3", "4", "river"]), ("What is 3 plus 4?", ["7", "stone", "12"]),
             ("Which is green?", ["garden", "winter"]), ("Where is the road?", ["north", "under the table"])]


def write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def context(question: str) -> str:
    return f"Question: {question}\nAnswer:"  # lm-eval's doc_to_text of our task config


@torch.no_grad()
def loglikelihood(model, tokenizer, ctx: str, continuation: str) -> float:
    """log p(continuation | ctx), summed over its tokens, split as lm-eval splits: encode the whole, drop the
    context's tokens."""
    whole, head = tokenizer.encode(ctx + continuation), tokenizer.encode(ctx)
    logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(len(head), len(whole)))


def by_hand(model, tokenizer) -> tuple[list[tuple[int, int]], list[list[float]]]:
    """(argmax of log-likelihood, argmax of log-likelihood per character) of each question's choices, and the
    log-likelihoods."""
    picks, every = [], []
    for question, choices in QUESTIONS:
        lls = [loglikelihood(model, tokenizer, context(question), " " + c) for c in choices]
        per_char = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
        picks.append((lls.index(max(lls)), per_char.index(max(per_char))))
        every.append(lls)
    return picks, every


def mc_file(path: Path, picks: list[tuple[int, int]]) -> Path:
    """Questions 1-2 answered with the hand argmax, 3-4 with another choice (by text for 2 and 4): acc is 0.5 by
    hand, and only if lm-eval's argmax agrees with it question by question."""
    records = []
    for i, ((question, choices), (best, _)) in enumerate(zip(QUESTIONS, picks, strict=True)):
        answer = best if i < 2 else (best + 1) % len(choices)
        records.append({"question": question, "choices": choices, "answer": choices[answer] if i % 2 else answer})
    return write(path, records)


def expected(picks: list[tuple[int, int]], answers: list[int]) -> dict[str, float]:
    n = len(answers)
    return {"acc": sum(p[0] == a for p, a in zip(picks, answers, strict=True)) / n,
            "acc_norm": sum(p[1] == a for p, a in zip(picks, answers, strict=True)) / n, "n": n}


def test_multiple_choice_acc_and_acc_norm_equal_the_hand_computation(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    picks, lls = by_hand(model, tokenizer)
    task = check_task_file(mc_file(tmp_path / "mc.jsonl", picks))
    answers = [r["answer"] for r in task.records]
    assert task.kind == "multiple_choice" and task.n == 4
    want = expected(picks, answers)
    assert want["acc"] == 0.5
    got = evaluate_task(tiny_model_dir, task, device="cpu", details=True)
    assert {k: v for k, v in got.items() if k != "answers"} == want
    for theirs, ours in zip(got["answers"], lls, strict=True):  # each choice's figure, not only the argmax
        assert theirs == pytest.approx(ours, abs=1e-4)


@torch.no_grad()
def greedy(model, tokenizer, question: str, max_new: int = 32) -> str:
    ids = tokenizer.encode(context(question))
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).split("\n")[0].strip()


def test_exact_match_equals_greedy_generation_by_hand(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    said = greedy(model, tokenizer, "What is 1 plus 2?")
    assert said  # the random model says something: an answer of its own words
    path = write(tmp_path / "em.jsonl", [{"question": "What is 1 plus 2?", "answer": said},
                                         {"question": "Where is the road?", "answer": said + " zzz"}])
    got = evaluate_task(None, path, model=model, tokenizer=tokenizer, details=True)
    assert got == {"exact_match": 0.5, "n": 2, "answers": [said, greedy(model, tokenizer, "Where is the road?")]}
    assert evaluate_task(None, path, model=model, tokenizer=tokenizer, limit=1) == {"exact_match": 1.0, "n": 1}


def test_a_lora_checkpoint_is_its_adapter_merged_into_the_base(make_spec, tmp_path):
    spec = make_spec(finetune="lora", lora={"rank": 4}, lr=1e-2, max_steps=2, eval_every=2, save_every=2,
                     eval_data=None)
    checkpoint = train(spec, tmp_path / "run").checkpoint
    model, _ = load_model(checkpoint, device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(export_checkpoint(checkpoint, tmp_path / "merged", merged=True))
    ours, theirs = model.state_dict(), merged.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.allclose(ours[k], theirs[k]) for k in ours)
    base = AutoModelForCausalLM.from_pretrained(spec.base_model).state_dict()
    assert any(not torch.equal(ours[k], base[k]) for k in base)  # the adapter is in, not the bare base


@pytest.mark.parametrize(("records", "message"), [
    ([{"question": "a", "choices": ["x", "y"], "answer": 0}, {"question": "b", "choices": ["x", "y"], "answer": 2}],
     "line 2: answer 2 is outside the choices"),
    ([{"question": "a", "choices": ["x", "y"], "answer": "z"}], "line 1: answer \"z\" is not one of the choices"),
    ([{"question": "a", "answer": "1"}, "", {"question": "b", "choices": ["x", "y"], "answer": 0}],
     "line 3: a multiple-choice question, but the first is exact-match"),
    ([{"question": "a"}], "line 1: missing field 'answer'"),
    ([{"question": "a", "answer": "1"}, "{not json"], "line 2: invalid JSON"),
    ([{"question": "a", "choices": ["x"], "answer": 0}], "line 1: field 'choices' must be a list of at least 2"),
    ([""], "no questions found"),
])
def test_bad_task_files_name_the_line(tmp_path, records, message):
    with pytest.raises(DataError, match=message):
        check_task_file(write(tmp_path / "t.jsonl", records))


def test_the_config_reads_the_local_copy_and_a_missing_model_is_a_task_error(tmp_path):
    task = check_task_file(write(tmp_path / "t.jsonl", [{"question": "a", "answer": 7}]))
    name = write_task_config(task, tmp_path / "cfg")
    config = (tmp_path / "cfg" / f"{name}.yaml").read_text()
    assert "dataset_path: json" in config and "generate_until" in config and str(tmp_path / "cfg") in config
    assert json.loads((tmp_path / "cfg" / f"{name}.jsonl").read_text()) == {"question": "a", "answer": "7"}
    with pytest.raises(TaskError, match="cannot be loaded"):
        load_model(tmp_path / "nowhere", device="cpu")


def test_cli_names_the_bad_line_and_the_unloadable_model(tiny_model_dir, tmp_path, capsys):
    bad = write(tmp_path / "bad.jsonl", [{"question": "a", "choices": ["x", "y"], "answer": 5}])
    assert main(["eval-task", str(tiny_model_dir), str(bad)]) == 2
    assert "bad.jsonl, line 1: answer 5 is outside the choices" in capsys.readouterr().err
    good = write(tmp_path / "good.jsonl", [{"question": "a", "choices": ["x", "y"], "answer": 1}])
    assert main(["eval-task", str(tmp_path), str(good), "--device", "cpu"]) == 2
    assert "the model cannot be loaded" in capsys.readouterr().err
