"""POST /v1/completions and /v1/chat/completions: OpenAI's request and response shapes (SSE chunks when ``stream``),
from a base model (``GET /v1/models``) or one of the owner's checkpoints, ``<job_id>:<checkpoint name>`` (``step-N``
or ``best``, the names the checkpoints routes take).

Models load and generate in the bounded threads of :mod:`api.model_cache`, never on the event loop; a client that
goes away sets its generation's ``cancelled`` flag, which the engine checks after every token. Each owner has at
most MOL_GENERATIONS_PER_OWNER generations running or waiting (the next is 429), and a prompt is measured against
MOL_MAX_PROMPT_CHARS and the model's context before any tokenizer reads it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mol_engine.budget import best_checkpoint_dir
from mol_engine.generate import (
    Completion,
    GenerationError,
    LoadedModel,
    ModelSource,
    Sampling,
    chat_prompt,
    encode_prompt,
    generate,
)
from mol_engine.run_dir import BEST_NAME, step_of
from store.db import Job, is_id
from store.models import available_models, model_type
from store.settings import Settings

from ..deps import StreamOwner, Svc
from ..model_cache import Serving, serving_of
from ..owner_limits import OwnerBusy, Slot
from ..schemas import SSE, ChatCompletionIn, ChatCompletionOut, CompletionIn, CompletionOut, ModelOut, errors
from .checkpoints import resolve_name

router = APIRouter(tags=["completions"], responses=errors(400, 401, 404, 409, 422, 429))
log = logging.getLogger(__name__)
RETRY_AFTER_S = 1  # an owner's generations end within seconds (MOL_MAX_COMPLETION_TOKENS): soon worth a retry
GENERATION_FAILED = "the generation failed on the server (its log has the error)"  # the error itself is not shown


def checkpoint_path(settings: Settings, job_id: str, name: str) -> Path | None:
    """The directory of the job's checkpoint called ``name`` (``step-N``, or ``best`` as the download route takes
    it: 409 while the job has none), or None when there is none."""
    run = settings.run_dir(job_id)
    name = resolve_name(run.path, name)
    return next((p for p in run.checkpoint_dirs() if p.name == name), None)


def resolve_model(svc, owner: str, model_id: str) -> ModelSource:
    """What ``model_id`` names for ``owner``: a base model, or a checkpoint of one of the owner's jobs (with the
    job's base model, which a LoRA adapter loads on); 404 for anything else, another owner's checkpoint included."""
    models = available_models(svc.settings)
    if model_id in models:
        return ModelSource(models[model_id])
    job_id, _, name = model_id.partition(":")
    with svc.sessions() as db:
        job = db.get(Job, job_id) if is_id(job_id) else None
        owned = job is not None and job.owner == owner
        base_id = job.spec.get("base_model") if owned else None
    path = checkpoint_path(svc.settings, job_id, name) if owned else None
    if path is None:
        raise HTTPException(404, f"model: '{model_id}' not found: a base model id (GET /v1/models) or a checkpoint "
                                 f"id '<job_id>:step-N' of one of your jobs")
    return ModelSource(path, models.get(base_id))


def checkpoint_models(svc, owner: str) -> list[ModelOut]:
    """The owner's checkpoints as completion models, ``<job_id>:<name>``, newest first (by job, then by step), each
    job's ``best`` (when it has one) before its steps; each names its job (``job_name``) for people to pick by."""
    with svc.sessions() as db:
        jobs = db.query(Job.id, Job.name, Job.spec).filter(Job.owner == owner).order_by(Job.created_at.desc()).all()
    models = available_models(svc.settings)
    listed = []
    for job_id, job_name, spec in jobs:
        base, run = models.get(spec.get("base_model")), svc.settings.run_dir(job_id)
        best = best_checkpoint_dir(run.path)
        named = ([(BEST_NAME, best)] if best else []) + [(p.name, p) for p in reversed(run.checkpoint_dirs())]
        listed += [checkpoint_model(f"{job_id}:{name}", path, base, owner, job_name) for name, path in named]
    return listed


def checkpoint_model(model_id: str, path: Path, base: Path | None, owner: str,
                     job_name: str | None = None) -> ModelOut:
    """The model object of checkpoint ``path`` (of the job ``job_name`` on ``base``, None when that is gone) listed
    as ``model_id`` (``<job_id>:best`` or ``<job_id>:step-N``)."""
    return ModelOut(id=model_id, created=mtime_s(path), owned_by=owner,
                    model_type=model_type(base) if base is not None else None, kind="checkpoint", job_name=job_name,
                    checkpoint=model_id.rsplit(":", 1)[-1], step=step_of(path))


def mtime_s(path: Path) -> int:
    """When ``path`` was last written, in Unix seconds (0 when it cannot be read)."""
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0


class Running:
    """One generation in a thread of ``serving``: its text pieces arrive on an asyncio queue, its end in ``done``;
    the owner's ``slot`` is given back when its thread has ended (or when it never started)."""

    def __init__(self, serving: Serving, loaded: LoadedModel, prompt_ids: list[int], sampling: Sampling,
                 slot: Slot) -> None:
        self.loop = asyncio.get_running_loop()
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.serving = serving
        work = serving.threads.submit(self._work, loaded, prompt_ids, sampling)
        work.add_done_callback(lambda _work: slot.release())  # the thread's end, not the awaiting task's
        self.done = asyncio.wrap_future(work)

    def _work(self, loaded: LoadedModel, prompt_ids: list[int], sampling: Sampling) -> Completion:
        try:
            completion = generate(loaded, prompt_ids, sampling, on_text=self._put, cancelled=self.cancelled)
            self.serving.count(completion.finish_reason)
            return completion
        finally:
            self._put(None)  # the end, after every piece

    def _put(self, piece: str | None) -> None:
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, piece)

    async def texts(self) -> AsyncIterator[str]:
        while (piece := await self.pieces.get()) is not None:
            yield piece

    async def result(self, request: Request) -> Completion:
        """The whole completion; cancelled when the client disconnects before it is done."""
        try:
            while not self.done.done():
                await asyncio.wait({self.done}, timeout=0.25)
                if not self.done.done() and await request.is_disconnected():
                    self.cancelled.set()
            return self.done.result()
        finally:
            self.cancelled.set()  # also when this handler itself was cancelled; a no-op once done


def _usage(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def _text_whole(c: Completion) -> dict:
    return {"object": "text_completion", "usage": _usage(c),
            "choices": [{"index": 0, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}]}


def _text_chunk(piece: str, reason: str | None) -> dict:
    return {"object": "text_completion",
            "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": reason}]}


def _chat_whole(c: Completion) -> dict:
    message = {"role": "assistant", "content": c.text}
    return {"object": "chat.completion", "usage": _usage(c),
            "choices": [{"index": 0, "message": message, "finish_reason": c.finish_reason}]}


def _chat_chunk(piece: str, reason: str | None) -> dict:
    delta = {"content": piece} if piece else {}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}


@dataclass(frozen=True)
class Shape:
    """How OpenAI writes one kind of completion: the whole answer, its streamed chunks, and the chunk that opens a
    stream (a chat's assistant role), if any."""

    prefix: str
    whole: Callable[[Completion], dict]
    chunk: Callable[[str, str | None], dict]  # (text piece, finish_reason or None before the last)
    opening: dict | None = None


TEXT = Shape("cmpl", _text_whole, _text_chunk)
CHAT = Shape("chatcmpl", _chat_whole, _chat_chunk, opening={"object": "chat.completion.chunk", "choices": [
    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})


@dataclass(frozen=True)
class PromptIn:
    """A request's prompt: the field it came in (``prompt`` or ``messages``), its length in characters, and the text
    it makes for a model (a chat's, through the model's template)."""

    field: str
    chars: int
    text_for: Callable[[LoadedModel], str]


def prompt_limit(settings: Settings, context: int | None = None) -> tuple[int, str]:
    """The most characters a prompt may have, and what says so: MOL_MAX_PROMPT_CHARS, or for a model of ``context``
    tokens that many times MOL_PROMPT_CHARS_PER_TOKEN where it is smaller (more cannot fit the context)."""
    per_token = settings.prompt_chars_per_token
    if context is not None and context * per_token < settings.max_prompt_chars:
        return context * per_token, (f"the model's context of {context} tokens times {per_token} characters a "
                                     "token, MOL_PROMPT_CHARS_PER_TOKEN")
    return settings.max_prompt_chars, "MOL_MAX_PROMPT_CHARS"


def check_prompt_length(field: str, chars: int, settings: Settings, context: int | None = None) -> None:
    """Returns when ``chars`` is within :func:`prompt_limit`; else 422 naming ``field`` and the limit."""
    limit, why = prompt_limit(settings, context)
    if chars > limit:
        raise HTTPException(422, f"{field}: {chars} characters, more than the {limit} accepted ({why}): shorten it")


def check_sizes(body: CompletionIn, settings: Settings) -> None:
    """Returns when ``max_tokens`` and the stop strings are within this server's limits; else 422 naming them (each
    token's text is checked against every start of each stop string: their length costs time at every token)."""
    cap = settings.max_completion_tokens
    if body.max_tokens > cap:
        raise HTTPException(422, f"max_tokens: {body.max_tokens} is more than this server's limit of {cap} "
                                 "(MOL_MAX_COMPLETION_TOKENS)")
    longest = max(map(len, body.stop_strings()), default=0)
    if longest > settings.max_stop_chars:
        raise HTTPException(422, f"stop: a stop string of {longest} characters is longer than this server's limit of "
                                 f"{settings.max_stop_chars} (MOL_MAX_STOP_CHARS)")


def owner_slot(serving: Serving, owner: str) -> Slot:
    """One of ``owner``'s generation slots; 429 (with Retry-After) when it holds them all."""
    try:
        return serving.owners.take(owner)
    except OwnerBusy as busy:
        raise HTTPException(429, f"you already have {busy.limit} completions running or waiting, this server's "
                                 "limit per owner (MOL_GENERATIONS_PER_OWNER): retry when one has ended",
                            headers={"Retry-After": str(RETRY_AFTER_S)}) from None


async def start(request: Request, svc, owner: str, body: CompletionIn, prompt: PromptIn) -> Running:
    """The generation of ``body`` started in a thread, holding one of ``owner``'s slots until it ends: 429 when the
    owner holds them all, 422 when the model does not load or the prompt does not fit it (refused by its length
    before it is tokenized when it is far too long)."""
    source = await run_in_threadpool(resolve_model, svc, owner, body.model)
    serving = serving_of(request.app.state, svc.settings)
    slot = owner_slot(serving, owner)

    def load_and_encode() -> tuple[LoadedModel, list[int]]:
        loaded = serving.models.get(source)
        text = prompt.text_for(loaded)
        check_prompt_length(prompt.field, len(text), svc.settings, loaded.context)
        return loaded, encode_prompt(loaded, text, body.max_tokens)

    work = serving.threads.submit(load_and_encode)
    try:
        loaded, prompt_ids = await asyncio.wrap_future(work)
    except BaseException as err:
        work.add_done_callback(lambda _work: slot.release())  # at once, or when a load this request left ends
        if isinstance(err, GenerationError):
            raise HTTPException(422, f"model: '{body.model}': {err}") from None
        raise
    sampling = Sampling(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                        stop=body.stop_strings(), seed=body.seed)
    return Running(serving, loaded, prompt_ids, sampling, slot)


async def answer(request: Request, svc, owner: str, body: CompletionIn, prompt: PromptIn, shape: Shape):
    """The completion of ``body`` as JSON, or as SSE chunks when it asks to ``stream``."""
    check_sizes(body, svc.settings)
    check_prompt_length(prompt.field, prompt.chars, svc.settings)
    running = await start(request, svc, owner, body, prompt)
    head = {"id": f"{shape.prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
    if body.stream:
        return StreamingResponse(sse(running, shape, head), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        completion = await running.result(request)
    except Exception:
        log.exception("a completion of %s failed", body.model)
        raise HTTPException(500, GENERATION_FAILED) from None
    return head | shape.whole(completion)


async def sse(running: Running, shape: Shape, head: dict) -> AsyncIterator[str]:
    """OpenAI's stream: a ``data:`` line per chunk, the last with its finish_reason, then ``data: [DONE]``; a
    generation that fails after the 200 went out ends with an error chunk (OpenAI's ``{"error": …}``) instead."""
    try:
        if shape.opening:
            yield _data(head | shape.opening)
        async for piece in running.texts():
            yield _data(head | shape.chunk(piece, None))
        try:
            completion = await running.done
        except Exception:
            log.exception("a streamed completion of %s failed", head["model"])
            yield _data({"error": {"message": GENERATION_FAILED, "type": "server_error", "param": None,
                                   "code": None}})
        else:
            yield _data(head | shape.chunk("", completion.finish_reason))
        yield "data: [DONE]\n\n"
    finally:
        running.cancelled.set()  # the client went away mid-stream (or it ended): the generation stops


def _data(chunk: dict) -> str:
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


async def openai_errors(answering):
    """What ``answering`` answers, or its HTTPException as :func:`openai_error`."""
    try:
        return await answering
    except HTTPException as err:
        return openai_error(err)


def openai_error(err: HTTPException) -> JSONResponse:
    """The error in the API's shape (``detail``) and in OpenAI's (``error.message``, which its clients show)."""
    kind = {404: "not_found_error", 429: "rate_limit_error", 500: "server_error"}.get(err.status_code,
                                                                                    "invalid_request_error")
    return JSONResponse({"detail": err.detail, "error": {"message": err.detail, "type": kind, "param": None,
                                                          "code": err.status_code}}, status_code=err.status_code,
                        headers=err.headers)


STREAMED = {200: {"content": SSE, "description": "JSON, or with `stream: true` SSE chunks ending `data: [DONE]`"}}


@router.post("/v1/completions", response_model=CompletionOut, responses=STREAMED)
async def create_completion(body: CompletionIn, request: Request, owner: StreamOwner, svc: Svc):
    """A completion of ``prompt``, OpenAI-compatible (the ``openai`` client works with base_url ``…/v1``)."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        return openai_error(HTTPException(422, f"prompt: one prompt per request (got {len(prompts)})"))
    prompt = PromptIn("prompt", len(prompts[0]), lambda _loaded: prompts[0])
    return await openai_errors(answer(request, svc, owner, body, prompt, TEXT))


@router.post("/v1/chat/completions", response_model=ChatCompletionOut, responses=STREAMED)
async def create_chat_completion(body: ChatCompletionIn, request: Request, owner: StreamOwner, svc: Svc):
    """The assistant's reply to ``messages``, for a model whose tokenizer has a chat template (422 otherwise)."""
    messages = [m.model_dump() for m in body.messages]
    prompt = PromptIn("messages", sum(len(m["role"]) + len(m["content"]) for m in messages),
                      lambda loaded: chat_prompt(loaded, messages))
    return await openai_errors(answer(request, svc, owner, body, prompt, CHAT))
