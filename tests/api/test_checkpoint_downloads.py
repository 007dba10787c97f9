"""Downloaded checkpoints are portable: no text file in a tarball names a server path, the adapter config and the
model card name the registered model, and the card names the owner's datasets with their sha256; the checkpoint
list reports the bytes a download carries. A full disk while a download is merged answers 507; a download whose
token is revoked is cut."""

import errno
import hashlib
import io
import json
import tarfile
import time

import httpx
import pytest

from api.app import create_app
from api.auth import create_token, revoke_tokens
from api.services import checkpoint_downloads
from mol_engine.model_card import front_matter
from store.usage import tree_bytes
from tests.api.test_results import DOCS, finished_job  # noqa: F401  (the fixture that runs a job)
from tests.api.test_slow_clients import WEIGHTS, add_checkpoint
from tests.live_server import serving


def download(client, auth, job_id: str, fmt: str, folders: dict | None = None) -> dict[str, bytes]:
    """Every regular file of the job's step-2 tarball in ``fmt``, by its path inside the model directory; the folder
    every member lies in, and the file name the server gives, go to ``folders[(job_id, fmt)]``."""
    response = client.get(f"/v1/jobs/{job_id}/checkpoints/step-2/download", headers=auth(), params={"format": fmt})
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        members = tar.getmembers()
        if folders is not None:
            disposition = response.headers["content-disposition"]
            folders[(job_id, fmt)] = ({m.name.split("/", 1)[0] for m in members}, disposition.split('"')[1])
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in members if m.isfile()}


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the database plays no part here
def test_downloads_name_the_registered_model_and_no_server_path(client, auth, finished_job, settings,  # noqa: F811
                                                                tmp_path_factory):
    server = str(tmp_path_factory.getbasetemp())  # MOL_HOME, the runs, the models and their link targets
    full = finished_job(max_steps=2, save_every=2, eval_every=2)
    lora = finished_job(finetune="lora", lora={"rank": 4}, max_steps=2, save_every=2, eval_every=2)
    folders = {}
    for job_id, fmt, library in ((full, "merged", "transformers"), (lora, "adapter", "peft"),
                                 (lora, "merged", "transformers")):
        files = download(client, auth, job_id, fmt, folders)
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
        assert ("`tiny` is not on the Hugging Face hub: it is the model `tiny` of the MoL Studio server that "
                "trained it") in card  # where the base came from
        if fmt == "adapter":  # "tiny" would be fetched from the hub, a different model: a placeholder that fails
            base = json.loads(texts["adapter_config.json"])["base_model_name_or_path"]
            assert base == "<local base model 'tiny': not on the Hugging Face hub; put its directory here>"
            assert 'AutoModelForCausalLM.from_pretrained("path/to/the/base")' in card

    # unpacked side by side, no two formats share a folder (an adapter beside its merged model: applied twice)
    assert folders == {(full, "merged"): ({f"{full}-step-2"}, f"{full}-step-2.tar.gz"),
                       (lora, "adapter"): ({f"{lora}-step-2-adapter"}, f"{lora}-step-2-adapter.tar.gz"),
                       (lora, "merged"): ({f"{lora}-step-2-merged"}, f"{lora}-step-2-merged.tar.gz")}

    (listed,) = client.get(f"/v1/jobs/{full}/checkpoints", headers=auth()).json()
    step = settings.runs_dir / full / "checkpoints" / "step-2"
    assert listed["bytes"] == tree_bytes(step / "model") < tree_bytes(step)  # the weights, not optimizer or RNG


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_full_disk_while_merging_a_download_answers_507_and_leaves_no_export(client, auth, monkeypatch):
    job_id, _model = add_checkpoint(client.app, adapter=True)
    exports = client.app.state.services.settings.exports_dir
    failures = iter([OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded")])

    def export_checkpoint(checkpoint, out, merged=False):  # the merge writes part of the model, then the disk is full
        out.mkdir(parents=True)
        (out / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 4096)
        raise next(failures)

    monkeypatch.setattr(checkpoint_downloads, "export_checkpoint", export_checkpoint)
    for _ in range(2):
        response = client.get(f"/v1/jobs/{job_id}/checkpoints/step-1/download", headers=auth())
        assert response.status_code == 507, response.text  # before the fix: the OSError, a 500
        assert response.json()["detail"] == ("checkpoint 'step-1': the server's disk is full while preparing the "
                                             "'merged' download; free space and try again")
        assert list(exports.iterdir()) == []  # the partial export is gone


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_revoking_the_token_cuts_an_open_download(settings):
    settings = settings.model_copy(update={"token_recheck_s": 0.2})
    app = create_app(settings, enqueue=lambda _job_id: None)
    sessions = app.state.services.sessions
    job_id, _model = add_checkpoint(app)
    with sessions.begin() as db:
        token = create_token(db, "alice")

    def read(token: str, revoke: bool) -> tuple[int, bool]:
        """(bytes read, whether the download broke) of a download paused after its first chunk, when the token
        is revoked (``revoke``) or not."""
        url, got = f"{base}/v1/jobs/{job_id}/checkpoints/step-1/download", 0
        with httpx.stream("GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            got += len(next(chunks))
            if revoke:
                with sessions.begin() as db:  # what `mol token revoke alice` does
                    assert revoke_tokens(db, "alice")
            time.sleep(0.5)  # the server waits on the client: the next chunk it makes is past the recheck
            try:
                for chunk in chunks:
                    got += len(chunk)
            except httpx.RemoteProtocolError:  # the connection closed before the end of the chunked body
                return got, True
        return got, False

    with serving(app) as base:
        whole, broke = read("tok-alice", revoke=False)
        assert not broke and whole > WEIGHTS  # a token in force: read to the end, pauses and all
        cut, broke = read(token, revoke=True)
    assert broke and cut < WEIGHTS // 2  # before the fix: the whole tarball
