"""The completions routes bound what a client can make the server do: a prompt too long for the model is refused
by its length before any tokenizer sees it, an owner runs at most MOL_GENERATIONS_PER_OWNER generations at once (the
next gets 429) so another owner's completion still starts at once, schema-valid but unusable values (a vanishing
temperature, a seed past 64 bits, an empty prompt, a lone surrogate) are 422s naming the field, and a generation
that fails mid-stream ends its stream with an error chunk and ``[DONE]``."""

import json
import shutil
import threading
import time

import httpx
import pytest

import api.routes.completions as completions
from api.app import create_app
from api.model_cache import serving_of
from api.owner_limits import OwnerBusy, OwnerLimits
from store.settings import Settings
from tests.live_server import serving

AUTH = {"alice": {"Authorization": "Bearer tok-alice"}, "bob": {"Authorization": "Bearer tok-bob"}}
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
MAX_PROMPT_CHARS = 20_000  # MOL_MAX_PROMPT_CHARS here; tiny's own bound is 256 tokens x 32 = 8192 characters


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """(base URL, app) of a live server with the models tiny and chatty (tiny with a chat template); the
    generation limits are the defaults."""
    root = tmp_path_factory.mktemp("bounds")
    (root / "models").mkdir()
    (root / "models" / "tiny").symlink_to(tiny_model_dir)
    chatty = shutil.copytree(tiny_model_dir, root / "models" / "chatty")
    config = json.loads((chatty / "tokenizer_config.json").read_text()) | {"chat_template": TEMPLATE}
    (chatty / "tokenizer_config.json").write_text(json.dumps(config))
    settings = Settings(home=root / "home", models_dir=root / "models", demo_model=False,
                        max_prompt_chars=MAX_PROMPT_CHARS, tokens="alice:tok-alice,bob:tok-bob")
    app = create_app(settings, enqueue=lambda _job_id: None)
    with serving(app) as base:
        yield base, app


def post(base: str, body: dict, owner: str = "alice", path: str = "/v1/completions", **kw) -> httpx.Response:
    return httpx.post(f"{base}{path}", json={"model": "tiny", "max_tokens": 4} | body, headers=AUTH[owner],
                      timeout=kw.pop("timeout", 30), **kw)


@pytest.fixture
def encodes(monkeypatch) -> list[int]:
    """The lengths of the prompts the completions routes tokenize, from now on."""
    lengths: list[int] = []
    real = completions.encode_prompt

    def counted(loaded, prompt, max_tokens):
        lengths.append(len(prompt))
        return real(loaded, prompt, max_tokens)

    monkeypatch.setattr(completions, "encode_prompt", counted)
    return lengths


def test_a_prompt_too_long_for_the_model_is_refused_before_it_is_tokenized(server, encodes):
    base, _app = server
    for prompt, limit in (("x" * 9000, "8192"), ("x" * (4 * MAX_PROMPT_CHARS), f"{MAX_PROMPT_CHARS}")):
        started = time.monotonic()
        refused = post(base, {"prompt": prompt})
        assert time.monotonic() - started < 2
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"].startswith(f"prompt: {len(prompt)} characters")
        assert limit in refused.json()["detail"] and refused.json()["error"]["message"] == refused.json()["detail"]
    assert "MOL_MAX_PROMPT_CHARS" in refused.json()["detail"]
    messages = [{"role": "user", "content": "x" * 9000}]
    refused = post(base, {"model": "chatty", "messages": messages}, path="/v1/chat/completions")
    assert refused.status_code == 422 and refused.json()["detail"].startswith("messages: "), refused.text
    messages = [{"role": "user", "content": "x" * MAX_PROMPT_CHARS}] * 2
    refused = post(base, {"model": "chatty", "messages": messages}, path="/v1/chat/completions")
    assert refused.status_code == 422 and refused.json()["detail"].startswith("messages: "), refused.text
    assert "MOL_MAX_PROMPT_CHARS" in refused.json()["detail"]
    assert encodes == []  # none reached the tokenizer
    fits = post(base, {"prompt": "the river " * 20})
    assert fits.status_code == 200 and encodes == [200]


@pytest.fixture
def gate(monkeypatch):
    """(entered, release): the next two generations wait at their start until ``release`` is set (others run
    at once); ``entered`` counts those waiting."""
    release, entered, lock = threading.Event(), [], threading.Lock()
    real = completions.generate

    def gated(*args, **kwargs):
        with lock:
            held = len(entered) < 2
            if held:
                entered.append(1)
        if held:
            release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(completions, "generate", gated)
    yield entered, release
    release.set()


def wait_until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_an_owner_at_its_limit_gets_429_and_another_owner_is_not_delayed(server, gate):
    base, app = server
    entered, release = gate
    limit = app.state.services.settings.generations_per_owner
    assert limit == 2 < app.state.services.settings.generation_threads  # the defaults: one owner leaves a thread
    answers: list[httpx.Response] = []
    held = [threading.Thread(target=lambda s=s: answers.append(post(base, {"prompt": "the river", "stream": s})))
            for s in (True, False)]
    for thread in held:
        thread.start()
    wait_until(lambda: len(entered) == limit)  # alice's two generations hold their threads
    extra = post(base, {"prompt": "the river"})
    assert extra.status_code == 429, extra.text
    assert "MOL_GENERATIONS_PER_OWNER" in extra.json()["detail"] and f"{limit}" in extra.json()["detail"]
    assert extra.json()["error"]["type"] == "rate_limit_error" and int(extra.headers["Retry-After"]) >= 1
    started = time.monotonic()
    bobs = post(base, {"prompt": "the river", "stream": True}, owner="bob", timeout=10)
    assert bobs.status_code == 200 and bobs.text.endswith("data: [DONE]\n\n")
    assert time.monotonic() - started < 5  # not behind alice's generations
    release.set()
    for thread in held:
        thread.join(30)
    assert sorted(a.status_code for a in answers) == [200, 200]
    owners = serving_of(app.state, app.state.services.settings).owners
    wait_until(lambda: owners.held("alice") == 0)  # each slot is given back when its generation ends
    assert post(base, {"prompt": "the river"}).status_code == 200


@pytest.mark.parametrize(("field", "body", "expected"), [
    ("temperature", {"temperature": 1e-300}, "temperature: "),
    ("seed", {"seed": 2**64}, "seed: "),
    ("seed", {"seed": -(2**63) - 1}, "seed: "),
    ("prompt", {"prompt": ""}, "prompt"),
    ("prompt", {"prompt": [""]}, "prompt"),
    ("prompt", {"prompt": "the \ud800 river"}, "prompt"),
    ("stop", {"stop": ["\udfff"]}, "stop"),
    ("stop", {"stop": ["x", "y" * 257]}, "stop: a stop string of 257 characters is longer than this server's limit "
                                           "of 256 (MOL_MAX_STOP_CHARS)"),
    ("model", {"model": "tiny\ud800"}, "model: "),
], ids=["temperature-vanishing", "seed-over-64-bits", "seed-under-64-bits", "prompt-empty", "prompt-list-empty",
        "prompt-surrogate", "stop-surrogate", "stop-too-long", "model-surrogate"])
def test_schema_valid_but_unusable_values_are_422_naming_the_field(server, field, body, expected):
    base, _app = server
    body = {"model": "tiny", "prompt": "the river", "max_tokens": 4} | body
    answer = httpx.post(f"{base}/v1/completions", headers=AUTH["alice"] | {"Content-Type": "application/json"},
                        content=json.dumps(body), timeout=30)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith(expected)


def test_a_lone_surrogate_in_a_chat_message_is_422_naming_it(server):
    base, _app = server
    body = {"model": "chatty", "max_tokens": 4, "messages": [{"role": "user", "content": "a \ud800 b"}]}
    answer = httpx.post(f"{base}/v1/chat/completions", headers=AUTH["alice"] | {"Content-Type": "application/json"},
                        content=json.dumps(body), timeout=30)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("messages.0.content: "), answer.text


def test_the_edges_of_the_bounds_still_complete(server):
    base, _app = server
    for body in ({"temperature": 0}, {"temperature": 0.01, "seed": 2**64 - 1}, {"temperature": 2, "seed": -(2**63)},
                 {"prompt": " "}):
        answer = post(base, {"prompt": "the river"} | body)
        assert answer.status_code == 200, (body, answer.text)


def test_a_generation_that_fails_mid_stream_ends_with_an_error_chunk_and_done(server, monkeypatch):
    base, app = server
    real = completions.generate

    def fails_after_the_first_token(loaded, prompt_ids, sampling, on_text=None, cancelled=None):
        def first_then_fail(piece: str) -> None:
            on_text(piece)
            raise RuntimeError("the device went away")

        return real(loaded, prompt_ids, sampling, on_text=first_then_fail, cancelled=cancelled)

    monkeypatch.setattr(completions, "generate", fails_after_the_first_token)
    for path, body in (("/v1/completions", {"prompt": "the river"}),
                       ("/v1/chat/completions", {"model": "chatty", "messages": [{"role": "user", "content": "hi"}]})):
        answer = post(base, body | {"stream": True, "temperature": 0, "max_tokens": 8}, path=path)
        assert answer.status_code == 200
        lines = [line.removeprefix("data: ") for line in answer.text.split("\n\n") if line]
        assert lines[-1] == "[DONE]", lines
        error = json.loads(lines[-2])["error"]
        assert error["type"] == "server_error" and "generation failed" in error["message"]
        assert "device went away" not in error["message"]  # the server's own error stays in its log
        assert any(json.loads(line).get("choices") for line in lines[:-2])  # the first token came before it
    whole = post(base, {"prompt": "the river", "max_tokens": 8})  # not streamed: OpenAI's error shape, no stack
    assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error", whole.text
    owners = serving_of(app.state, app.state.services.settings).owners
    wait_until(lambda: owners.held("alice") == 0)


def test_owner_limits_count_each_owner_apart_and_a_slot_is_given_back_once():
    limits = OwnerLimits(2)
    first, _second = limits.take("alice"), limits.take("alice")
    with pytest.raises(OwnerBusy) as busy:
        limits.take("alice")
    assert busy.value.limit == 2 and limits.take("bob").owner == "bob"
    first.release()
    first.release()  # a second release gives back nothing more
    assert limits.held("alice") == 1
    limits.take("alice")
    with pytest.raises(OwnerBusy):
        limits.take("alice")
