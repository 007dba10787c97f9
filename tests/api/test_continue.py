"""Continuing from a checkpoint (store/lineage.py): the reference's syntax, what submit answers for another owner's
job or a checkpoint that is not there, the lineage in JobOut, the model card and the delete rule, and a continued
job that really starts from its parent's weights while its KL stays anchored to the original base."""

import io
import shutil
import tarfile

import pytest

from store.lineage import CheckpointRef, is_checkpoint_ref, parse_ref
from tests.api.conftest import tiny_job_spec
from tests.api.test_completions import variant
from worker.runner import run


@pytest.mark.parametrize("text, ref", [("job:job_ab12@best", CheckpointRef("job_ab12", "best")),
                                       ("job:job_ab12@final", CheckpointRef("job_ab12", "final")),
                                       ("job:j-1@step-40", CheckpointRef("j-1", "step-40"))])
def test_a_checkpoint_reference_parses_and_spells_back(text, ref):
    assert parse_ref(text) == ref and str(ref) == text and is_checkpoint_ref(text)


@pytest.mark.parametrize("text", ["job:job_ab12", "job:job_ab12@latest", "job:@best", "job:a b@best",
                                  "job:job_ab12@step-", "job:job_ab12@step-1234567890"])
def test_a_malformed_reference_says_the_syntax(text):
    with pytest.raises(ValueError, match="job:<job id>@best"):
        parse_ref(text)
    assert is_checkpoint_ref(text) and not is_checkpoint_ref("tiny") and not is_checkpoint_ref(None)


def evaluation_at(client, auth, job_id: str, step: int) -> dict:
    return next(p for p in client.get(f"/v1/jobs/{job_id}/metrics", headers=auth()).json()
                if p["step"] == step and "eval/domain_ppl" in p)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the lineage columns are checked on both by
def test_a_job_continues_from_a_checkpoint_anchored_to_the_original_base(client, auth, upload, settings):  # migrations
    trained_away = tiny_job_spec(upload, lr=0.03, kl_weight=0.0, sample_prompts=[])  # 2 steps off its base
    parent = client.post("/v1/jobs", headers=auth(), json=trained_away).json()["id"]
    assert run(parent, settings) == "succeeded"
    spec = tiny_job_spec(upload, sample_prompts=[])  # no sample completions: the time of these tests

    def submit(base_model: str, owner: str = "alice", **fields):
        return client.post("/v1/jobs", headers=auth(owner), json=spec | {"base_model": base_model} | fields)

    unknown = submit("job:job_nothere@best")
    assert unknown.status_code == 404 and unknown.json()["detail"] == "job 'job_nothere' not found"
    theirs = client.post("/v1/jobs", headers=auth("bob"), json=tiny_job_spec(upload, owner="bob")
                         | {"base_model": f"job:{parent}@best"})
    assert theirs.status_code == 404 and theirs.json()["detail"] == f"job '{parent}' not found"  # no leak
    gone = submit(f"job:{parent}@step-1")
    assert gone.status_code == 409 and f"job:{parent}@step-1" in gone.json()["detail"]
    malformed = submit(f"job:{parent}@latest")
    assert malformed.status_code == 422 and malformed.json()["detail"].startswith("base_model: ")
    assert submit("tiny", reference_model="nope").json()["detail"].startswith("reference_model: unknown model")
    variant(settings.models_dir / "tiny", settings.models_dir / "wider", config={"vocab_size": 999})
    assert "the same tokenizer" in submit("tiny", reference_model="wider").json()["detail"]

    made = submit(f"job:{parent}@best")
    assert made.status_code == 201, made.text
    child = made.json()["id"]
    lineage = {"parent_job_id": parent, "parent_checkpoint": "step-2", "original_base_model": "tiny"}
    assert {k: made.json()[k] for k in lineage} == lineage
    assert {k: client.get(f"/v1/jobs/{child}", headers=auth()).json()[k] for k in lineage} == lineage
    refused = client.delete(f"/v1/jobs/{parent}", headers=auth())  # the child is queued: it needs the checkpoint
    assert refused.status_code == 409 and child in refused.json()["detail"]

    assert run(child, settings) == "succeeded"
    before, start = evaluation_at(client, auth, parent, 2), evaluation_at(client, auth, child, 0)
    assert start["eval/domain_ppl"] == pytest.approx(before["eval/domain_ppl"], rel=1e-5)  # the parent's weights
    # the KL at step 0 is the parent's to the original base, not 0 (which a checkpoint as its own anchor would give)
    assert start["eval/general_kl"] == pytest.approx(before["eval/general_kl"], rel=1e-4)
    assert start["eval/general_kl"] > 1e-3  # (the parent drifted: 0.0015 here)

    response = client.get(f"/v1/jobs/{child}/checkpoints/step-2/download", headers=auth())
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        card = next(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith("README.md"))
    assert "## Lineage" in card and f"`{parent}` | `step-2` | `tiny` | `tiny`" in card
    assert str(settings.home) not in card

    grandchild = submit(f"job:{child}@final").json()  # a continue of a continue: still anchored to the first base
    assert (grandchild["parent_job_id"], grandchild["original_base_model"]) == (child, "tiny")
    shutil.rmtree(settings.run_dir(child).checkpoint("step-2"))  # pruned or removed before the grandchild starts
    assert run(grandchild["id"], settings) == "failed"
    error = client.get(f"/v1/jobs/{grandchild['id']}", headers=auth()).json()["error"]
    assert f"job:{child}@final" in error and "step-2" in error and "no longer exists" in error


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_lora_checkpoint_is_merged_and_a_new_adapter_trains_anchored_to_the_original_base(client, auth, upload,
                                                                                           settings):
    lora = {"finetune": "lora", "lora": {"rank": 4}, "sample_prompts": []}
    parent = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(upload, lr=0.05, kl_weight=0.0, **lora))
    assert run(parent.json()["id"], settings) == "succeeded"
    child = client.post("/v1/jobs", headers=auth(), json=tiny_job_spec(
        upload, base_model=f"job:{parent.json()['id']}@step-2", **lora)).json()["id"]
    assert run(child, settings) == "succeeded"
    before, start = evaluation_at(client, auth, parent.json()["id"], 2), evaluation_at(client, auth, child, 0)
    assert start["eval/domain_ppl"] == pytest.approx(before["eval/domain_ppl"], rel=1e-4)  # the merged weights
    # the new adapter's base is the merged parent; disabling it would measure KL 0 against the parent itself
    assert start["eval/general_kl"] == pytest.approx(before["eval/general_kl"], rel=1e-3)
    assert start["eval/general_kl"] > 1e-4
    # its adapter loads on its copy of the merged parent (playground, completions), not on a model id it lacks
    listed = client.get("/v1/models", headers=auth(), params={"include": "checkpoints"}).json()["data"]
    assert next(m for m in listed if m["id"] == f"{child}:step-2")["model_type"] == "llama"
