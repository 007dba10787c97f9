"""Downloaded checkpoints are portable: no text file in a tarball names a server path, the adapter config and the
model card name the registered model, and the card names the owner's datasets with their sha256; the checkpoint
list reports the bytes a download carries."""

import hashlib
import io
import json
import tarfile

import pytest

from api.disk import tree_bytes
from mol_engine.model_card import front_matter
from tests.api.test_results import DOCS, finished_job  # noqa: F401  (the fixture that runs a job)


def download(client, auth, job_id: str, fmt: str) -> dict[str, bytes]:
    """Every regular file of the job's step-2 tarball in ``fmt``, by its path inside the model directory."""
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/step-2/download", headers=auth(), params={"format": fmt})
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the database plays no part here
def test_downloads_name_the_registered_model_and_no_server_path(client, auth, finished_job, settings,  # noqa: F811
                                                                tmp_path_factory):
    server = str(tmp_path_factory.getbasetemp())  # MOL_HOME, the runs, the models and their link targets
    full = finished_job(max_steps=2, save_every=2, eval_every=2)
    lora = finished_job(finetune="lora", lora={"rank": 4}, max_steps=2, save_every=2, eval_every=2)
    for job_id, fmt, library in ((full, "merged", "transformers"), (lora, "adapter", "peft"),
                                 (lora, "merged", "transformers")):
        files = download(client, auth, job_id, fmt)
        domain_id = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["spec"]["domain_data"][0]
        texts = {name: data.decode() for name, data in files.items() if not name.endswith(".safetensors")}
        assert "README.md" in texts and "tokenizer.json" in texts, sorted(files)
        leaks = [name for name, text in texts.items() if server in text]
        assert not leaks, (fmt, leaks)
        card = texts["README.md"]
        assert front_matter(card)["base_model"] == "tiny" and front_matter(card)["library_name"] == library
        assert f"| domain | data.jsonl ({domain_id}) | `{hashlib.sha256(DOCS.encode()).hexdigest()}` |" in card
        assert "| Domain perplexity (held-out) |" in card and "step 2 (this checkpoint)" in card
        assert ("adapter_config.json" in files) == (fmt == "adapter")
        if fmt == "adapter":
            assert json.loads(texts["adapter_config.json"])["base_model_name_or_path"] == "tiny"
            assert 'AutoModelForCausalLM.from_pretrained("tiny")' in card

    (listed,) = client.get(f"/v1/jobs/{full}/checkpoints", headers=auth()).json()
    step = settings.runs_dir / full / "checkpoints" / "step-2"
    assert listed["bytes"] == tree_bytes(step / "model") < tree_bytes(step)  # the weights, not optimizer or RNG
