"""POST /v1/completions and /v1/chat/completions through the official ``openai`` client against a real uvicorn
server: greedy output equals the engine's ``generate``, streamed chunks add up to the whole text, chat through a
template, checkpoints (full, LoRA, FSDP shards gathered once) by ``<job_id>:step-N`` for their owner only, a
client that goes away stops its generation, the resident models stay bounded, and each bad input is a 4xx naming
what is wrong."""

import json
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from api.app import create_app
from api.model_cache import ModelCache, serving_of
from mol_engine.generate import ModelSource
from store.db import Job
from store.settings import Settings
from tests.live_server import serving

TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
CAP = 3000  # MOL_MAX_COMPLETION_TOKENS here
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def variant(source: Path, dest: Path, config: dict | None = None, tokenizer: dict | None = None) -> Path:
    """A copy of the model ``source`` with fields of its config (and generation config) or tokenizer config set."""
    shutil.copytree(source, dest)
    for name, fields in (("config.json", config), ("generation_config.json", config),
                         ("tokenizer_config.json", tokenizer)):
        if fields and (dest / name).is_file():
            (dest / name).write_text(json.dumps(json.loads((dest / name).read_text()) | fields))
    return dest


def add_job(app, owner: str, checkpoint: Path | None, step: int) -> str:
    """A succeeded job of ``owner`` on base 'tiny' whose checkpoint step-``step`` holds the model dir ``checkpoint``
    (none when it is None)."""
    svc = app.state.services
    with svc.sessions.begin() as db:
        job = Job(owner=owner, name="served", spec={"base_model": "tiny"}, max_steps=step, status="succeeded")
        db.add(job)
    if checkpoint is None:
        return job.id
    path = svc.settings.runs_dir / job.id / "checkpoints" / f"step-{step}"
    shutil.copytree(checkpoint, path / "model")
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    return job.id


def lora_adapter(base: Path, dest: Path) -> Path:
    """A LoRA adapter on ``base`` whose B matrices are non-zero (so it changes the output)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(base).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """(base URL, app, alice's job ids by kind, bob's job id) of a real server with models tiny, chatty (a chat
    template), endless (no end-of-text token, a long context) and broken (an unknown architecture)."""
    root = tmp_path_factory.mktemp("completions")
    models = root / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_model_dir)
    variant(tiny_model_dir, models / "chatty", tokenizer={"chat_template": TEMPLATE})
    variant(tiny_model_dir, models / "endless", config={"eos_token_id": None, "max_position_embeddings": 4096})
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    settings = Settings(home=root / "home", models_dir=models, demo_model=False, max_completion_tokens=CAP,
                        resident_models=2, tokens=",".join(f"{o}:{t}" for o, t in TOKENS.items()))
    app = create_app(settings, enqueue=lambda _job_id: None)
    jobs = {"full": add_job(app, "alice", tiny_model_dir, 1),
            "lora": add_job(app, "alice", lora_adapter(tiny_model_dir, root / "adapter"), 2)}
    bobs = add_job(app, "bob", tiny_model_dir, 1)
    with serving(app) as base:
        yield base, app, jobs, bobs


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key=TOKENS["alice"], max_retries=0, timeout=60)


def engine_greedy(model_dir: Path, prompt: str, max_tokens: int, adapter: Path | None = None) -> str:
    """The greedy completion straight from transformers' generate (and PEFT for an adapter)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True, clean_up_tokenization_spaces=False)


PROMPT = "Question: What is 2 plus 3?\nAnswer:"


def test_greedy_completion_equals_the_engine_and_streamed_chunks_add_up_to_it(client, tiny_model_dir):
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert whole.object == "text_completion" and whole.model == "tiny"
    assert whole.choices[0].text == engine_greedy(tiny_model_dir, PROMPT, 12)
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 5
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stream=True))
    texts = [c.choices[0].text for c in chunks]
    assert len([t for t in texts if t]) > 1  # token by token, not one piece
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    stop = whole.choices[0].text[3:5]  # a stop string cuts the text before it, streamed or not
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == whole.choices[0].text[:whole.choices[0].text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    sampled = [client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=1, seed=7)
               .choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]  # the same seed, the same sample


def test_every_openai_client_call_the_docs_show(client, served):
    """docs/api.md's client calls, each through the official ``openai`` package: models.list (bases; with
    include=checkpoints the owner's checkpoints too), models.retrieve, completions and chat completions, whole and
    streamed."""
    jobs, bobs = served[2], served[3]
    listed = client.models.list()  # before the fix: a bare JSON list, which the client cannot read as a page
    assert [m.id for m in listed] == ["broken", "chatty", "endless", "tiny"]
    assert {(m.object, m.owned_by) for m in listed} == {("model", "mol-studio")} and all(m.created for m in listed)
    with_checkpoints = [m.id for m in client.models.list(extra_query={"include": "checkpoints"})]
    assert with_checkpoints[4:] == [f"{jobs['lora']}:step-2", f"{jobs['full']}:step-1"]
    tiny = client.models.retrieve("tiny")
    assert (tiny.id, tiny.object, tiny.owned_by, tiny.model_type) == ("tiny", "model", "mol-studio", "llama")
    mine = client.models.retrieve(f"{jobs['lora']}:step-2")
    assert (mine.id, mine.owned_by, mine.kind, mine.model_type) == (f"{jobs['lora']}:step-2", "alice",
                                                                    "checkpoint", "llama")
    for missing in ("nobody", f"{bobs}:step-1", f"{jobs['full']}:step-9"):
        with pytest.raises(openai.NotFoundError, match="not found"):
            client.models.retrieve(missing)
    with pytest.raises(openai.ConflictError, match="no best checkpoint yet"):
        client.models.retrieve(f"{jobs['full']}:best")

    text = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0)
    assert text.object == "text_completion" and text.usage.completion_tokens <= 4
    streamed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    chat = client.chat.completions.create(model="chatty", messages=messages, max_tokens=4, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    chunks = client.chat.completions.create(model="chatty", messages=messages, max_tokens=4, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content


def test_chat_completion_through_the_tokenizer_template(client, served):
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    whole = client.chat.completions.create(model="chatty", messages=messages, max_tokens=10, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    prompt = "user: What is 2 plus 3?\nassistant:"  # what the template makes of the messages
    assert whole.choices[0].message.content == client.completions.create(
        model="chatty", prompt=prompt, max_tokens=10, temperature=0).choices[0].text
    chunks = list(client.chat.completions.create(model="chatty", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    with pytest.raises(openai.UnprocessableEntityError, match="no chat template"):
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)


def test_checkpoints_complete_for_their_owner_only(client, served, tiny_model_dir, tmp_path):
    base, _app, jobs, bobs = served
    listed = httpx.get(f"{base}/v1/models?include=checkpoints", headers={"Authorization": "Bearer tok-alice"}).json()
    checkpoints = [m["id"] for m in listed["data"] if m["kind"] == "checkpoint"]
    assert checkpoints == [f"{jobs['lora']}:step-2", f"{jobs['full']}:step-1"]  # newest first: the playground's pick
    plain = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer tok-alice"}).json()
    assert {m["kind"] for m in plain["data"]} == {"base"}  # the new-job form's list is unchanged
    full = client.completions.create(model=f"{jobs['full']}:step-1", prompt=PROMPT, max_tokens=6, temperature=0)
    assert full.choices[0].text == engine_greedy(tiny_model_dir, PROMPT, 6)
    adapter = client.completions.create(model=f"{jobs['lora']}:step-2", prompt=PROMPT, max_tokens=6, temperature=0)
    expected = engine_greedy(tiny_model_dir, PROMPT, 6, adapter=served[1].state.services.settings.runs_dir
                             / jobs["lora"] / "checkpoints" / "step-2" / "model")
    assert adapter.choices[0].text == expected != full.choices[0].text  # the adapter, on its base
    with pytest.raises(openai.ConflictError, match="no best checkpoint yet"):
        client.completions.create(model=f"{jobs['full']}:best", prompt=PROMPT, max_tokens=2)
    (served[1].state.services.settings.runs_dir / jobs["lora"] / "best.json").write_text('{"step": 2}')
    best = client.completions.create(model=f"{jobs['lora']}:best", prompt=PROMPT, max_tokens=6, temperature=0)
    assert best.choices[0].text == expected  # the alias the checkpoints routes take
    for model in (f"{bobs}:step-1", f"{jobs['full']}:step-9", "nobody", f"{jobs['full']}:../../x"):
        with pytest.raises(openai.NotFoundError, match="not found"):
            client.completions.create(model=model, prompt=PROMPT, max_tokens=2)


def sharded_checkpoint(base: Path, run_dir: Path, step: int, store: Path) -> Path:
    """``base`` with other weights, saved as an FSDP checkpoint (DCP shards) by a one-process gloo group here."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from mol_engine.checkpoint import save_sharded_checkpoint

    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(2)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn_like(weight) * 0.5)  # so that its text is not the base's
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        optimizer = torch.optim.AdamW(model.parameters())
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
        return save_sharded_checkpoint(run_dir, step, model, AutoTokenizer.from_pretrained(base), optimizer,
                                       schedule, {"step": step})
    finally:
        dist.destroy_process_group()


def test_an_fsdp_checkpoint_is_gathered_once_and_served(client, served, tiny_model_dir, tmp_path):
    from mol_engine.checkpoint import is_sharded_checkpoint
    from mol_engine.export import export_checkpoint

    app = served[1]
    job_id = add_job(app, "alice", None, 2)
    checkpoint = sharded_checkpoint(tiny_model_dir, app.state.services.settings.runs_dir / job_id, 2,
                                    tmp_path / "store")
    assert is_sharded_checkpoint(checkpoint)
    texts = [client.completions.create(model=f"{job_id}:step-2", prompt=PROMPT, max_tokens=6, temperature=0)
             .choices[0].text for _ in range(2)]
    expected = engine_greedy(export_checkpoint(checkpoint, tmp_path / "gathered"), PROMPT, 6)
    assert texts == [expected, expected] != [engine_greedy(tiny_model_dir, PROMPT, 6)] * 2
    assert len(list(app.state.services.settings.serving_dir.iterdir())) == 1  # gathered once, kept for reuse


def test_bad_inputs_are_4xx_naming_what_is_wrong(client):
    with pytest.raises(openai.UnprocessableEntityError, match=r"context is 256 tokens; the prompt has \d+"):
        client.completions.create(model="tiny", prompt="the river " * 200, max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError, match=f"max_tokens: {CAP + 1} is more than .* {CAP}"):
        client.completions.create(model="tiny", prompt="x", max_tokens=CAP + 1)
    with pytest.raises(openai.UnprocessableEntityError, match="model: 'broken': cannot load it"):
        client.completions.create(model="broken", prompt="x", max_tokens=2)
    with pytest.raises(openai.UnprocessableEntityError) as refused:  # the app's own validation: its detail
        client.completions.create(model="tiny", prompt="x", n=2)
    assert refused.value.body["detail"].startswith("n: Input should be less than or equal to 1")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).completions.create(
            model="tiny", prompt="x")


def wait_for_cancelled(serving, count: int) -> None:
    deadline = time.monotonic() + 20
    while serving.finished.get("cancelled", 0) < count:
        assert time.monotonic() < deadline, f"the generation went on: {serving.finished}"
        time.sleep(0.05)


def test_a_client_that_goes_away_stops_its_generation(served):
    """Streamed, the client leaves after the first chunk; not streamed, it gives up waiting after a second: either
    way the generation (CAP tokens: far longer) ends as cancelled."""
    base, app, _jobs, _bobs = served
    serving = serving_of(app.state, app.state.services.settings)
    cancelled = serving.finished.get("cancelled", 0)
    body = {"model": "endless", "prompt": PROMPT, "max_tokens": CAP, "temperature": 0}
    auth = {"Authorization": "Bearer tok-alice"}
    with httpx.stream("POST", f"{base}/v1/completions", json=body | {"stream": True}, timeout=60,
                      headers=auth) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first chunk came: generating, then the client leaves
    wait_for_cancelled(serving, cancelled + 1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/completions", json=body, timeout=httpx.Timeout(60, read=1), headers=auth)
    wait_for_cancelled(serving, cancelled + 2)
    assert len(serving.models.resident()) <= 2  # MOL_RESIDENT_MODELS, after tiny, chatty, endless and checkpoints


def test_the_model_cache_loads_once_and_evicts_the_least_recently_used():
    loaded: list[str] = []
    cache = ModelCache(2, lambda source: loaded.append(source.path.name) or source.path.name)
    a, b, c = (ModelSource(Path(name)) for name in "abc")
    assert [cache.get(s) for s in (a, b, a, c, a, b)] == ["a", "b", "a", "c", "a", "b"]
    assert loaded == ["a", "b", "c", "b"]  # a stayed (used again before c came), b was evicted by c
    assert cache.evicted == [b, c] and cache.resident() == [a, b]
