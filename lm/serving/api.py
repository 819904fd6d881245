"""`lm serve`: an OpenAI-compatible HTTP API and the live inspector page, on one model.

Endpoints (https://platform.openai.com/docs/api-reference is the contract followed):
  POST /v1/completions        text (or token-id) prompts; n, stop, seed, logprobs, echo, stream
  POST /v1/chat/completions   messages through the plain chat template (lm.serving.textstream)
  GET  /v1/models             the one model served
  GET  /                      the inspector page (static files in lm/serving/static, no CDN)
  GET  /api/info, POST /api/inspect, POST /api/stages   the page's own calls
  GET  /health                {"status": "ok", slots, busy, waiting}

Generation goes through `lm.inference.engine.Engine` (continuous batching on a background thread);
the page's forward passes run on the request threads. Errors have OpenAI's shape,
{"error": {"message", "type", "param", "code"}}: 400 for bad JSON, unknown fields, values
out of range and prompts that do not fit the context; 401 without the --api-key; 404 for
another model name; 429 when the waiting queue is full; 503 when the engine has stopped.

Sampling: temperature (0 greedy), top_p, and as extensions top_k and min_p (the OpenAI
client passes them in `extra_body`), applied in that order after temperature as `lm sample`
does; a body becomes a `SamplingParams`, whose checks are the ranges (the body caps only
temperature, at OpenAI's 2). Choice j of a request with `seed` s is drawn with
jax.random.fold_in(PRNGKey(s), j), which is the key `lm sample --seed s` uses for its sample j,
so the two give the same text.
Logprobs are the model's own (softmax of the raw logits), before temperature and filters.
Text prompts get BOS in front, as every training document starts; token-id prompts are used
exactly as given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import jax
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lm.data import pieces as pieces_lib
from lm.inference import engine
from lm.inference.load import need_transformer, open_run
from lm.inference.numpy_runner import decoder
from lm.inference.request import (
    DEFAULT_NEW_TOKENS,
    RequestError,
    SamplingParams,
    check_prompt,
    new_token_budget,
)
from lm.serving import inspector
from lm.serving.textstream import CHAT_STOP, TextStream, chat_prompt
from lm.util.fonts import cjk_font_path

STATIC = Path(__file__).parent / "static"
MAX_N = 32
MAX_STOPS = 4

# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a 400, not ignored

    model: str
    max_tokens: int | None = Field(None, ge=1)
    # the sampling values' ranges are SamplingParams' (`_sampling_params`)
    temperature: float = Field(1.0, le=2)  # OpenAI's limit, above what the model allows
    top_p: float = 1.0
    top_k: int | None = None  # extension, as vLLM spells it
    min_p: float = 0.0  # extension
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    # accepted at their neutral values only, so a client sending the defaults works
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _neutral(self):
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise ValueError(f"{name}: not supported (only 0)")
        if self.logit_bias:
            raise ValueError("logit_bias: not supported")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"stop: at most {MAX_STOPS} non-empty strings")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only with stream=true")
        if self.stream_options and set(self.stream_options) - {"include_usage"}:
            raise ValueError("stream_options: only include_usage is supported")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion(self):
        if self.best_of not in (None, self.n):
            raise ValueError("best_of: not supported (only equal to n)")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: an empty list")
        return self


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, str] | None = None

    @model_validator(mode="after")
    def _chat(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs=true")
        if self.response_format not in (None, {"type": "text"}):
            raise ValueError("response_format: only {'type': 'text'} is supported")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("max_tokens and max_completion_tokens: give one")
        return self


class InspectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    ids: list[int] | None = None
    temperature: float = Field(1.0, le=100)  # the page's cap; the ranges are SamplingParams'
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = Field(0, ge=0, lt=2**31)
    max_new: int = Field(40, ge=0, le=4096)


class ServeError(ValueError):
    """The server cannot start as asked (the address is taken); the message is one line."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code
        )  # fmt: skip

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}  # fmt: skip


def _validation_message(e: ValidationError | Any) -> tuple[str, str | None]:
    errs = e.errors()
    if not errs:
        return "invalid request", None
    first = errs[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "extra_forbidden":
        return f"{'.'.join(loc)}: unknown field", ".".join(loc) or None
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    # a union's members each report; name the field and the first reason
    loc = [x for x in loc if not x.startswith(("str", "list[", "int", "function-"))]
    where = ".".join(loc)
    return (f"{where}: {msg}" if where else msg), where or None


# ---------------------------------------------------------------- the model being served


class Served:
    """A loaded model: config, tokenizer, params, name, and its engine."""

    def __init__(self, cfg, tok, params, name: str, slots: int = 16, max_waiting: int = 256,
                 chunk: int = 4):  # fmt: skip
        self.cfg, self.tok, self.params, self.name = cfg, tok, params, name
        self.m = cfg.model
        self.engine = engine.Engine(params, self.m, slots=slots, max_waiting=max_waiting,
                                    chunk=chunk, pad_id=tok.pad_id)  # fmt: skip
        self.created = int(time.time())
        self.decode = decoder(tok)  # ids -> text, skipping ids past the tokenizer
        self.inspect_lock = threading.Lock()

    def encode(self, text: str, param: str) -> list[int]:
        try:
            return [self.tok.bos_id, *self.tok.encode(text)]
        except ValueError as e:  # lone surrogates, a task's unknown symbol
            raise ApiError(400, f"{param}: {e}", param=param) from None

    def token_entry(self, i: int, lp: float, tops) -> dict:
        b = pieces_lib.token_bytes(self.tok, [i])[0] or b""
        text = b.decode("utf-8", errors="replace") if b else self.tok.pieces([i])[0]
        return {"id": i, "token": text, "bytes": list(b), "logprob": lp, "top": tops}


# ---------------------------------------------------------------- one choice's life


class Choice:
    """One sequence of a request: its text stream, logprob entries and finish reason.

    `feed` and `finish` run on the engine thread and post events to the request's asyncio
    queue: ("delta", index, text, entries) and ("done", index, reason)."""

    def __init__(self, served: Served, index: int, stops, lstrip: bool, queue, loop,
                 want_logprobs: bool):  # fmt: skip
        self.served, self.index = served, index
        self.stream = TextStream(served.decode, stops, lstrip=lstrip)
        self.queue, self.loop = queue, loop
        self.want_logprobs = want_logprobs
        self.completion_tokens = 0
        self.text = ""
        self.entries: list[dict] = []
        self.finish_reason: str | None = None
        self.seq: engine.Sequence | None = None

    def _post(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass

    def feed(self, toks, lps, tops) -> bool:
        self.completion_tokens += len(toks)
        eos = self.served.tok.eos_id
        entries = []
        if self.want_logprobs:
            tok = self.served.tok
            entries = [
                self.served.token_entry(t, lp, [self.served.token_entry(i, v, None)
                                                for i, v in top])
                for t, lp, top in zip(toks, lps, tops, strict=True)
                if t != eos and t < tok.vocab_size
            ]  # fmt: skip
        new, stopped = self.stream.push([t for t in toks if t != eos])
        self.text += new
        self.entries += entries
        if new or entries:
            self._post(("delta", self.index, new, entries))
        return stopped

    def finish(self, reason: str) -> None:
        if reason in ("stop", "length"):
            rest = self.stream.close()
            if rest:
                self.text += rest
                self._post(("delta", self.index, rest, []))
        self.finish_reason = reason
        self._post(("done", self.index, reason))


# ---------------------------------------------------------------- one request's life


def _sampling_params(body: _Body) -> SamplingParams:
    try:
        return SamplingParams(body.temperature, body.top_k, body.top_p, body.min_p)
    except RequestError as e:
        raise ApiError(400, f"{e.field}: {e.rule}", param=e.field) from None


def _budgets(served: Served, body: _Body, prompts: list[list[int]], chat: bool,
             bos: bool) -> list[int]:  # fmt: skip
    """Each prompt's new tokens: max_tokens, or as many as fit up to OpenAI's default of 16
    for completions (DEFAULT_NEW_TOKENS for chat). `bos`: the prompts are text, BOS added."""
    S, V = served.m.max_seq_len, served.m.vocab_size
    default = DEFAULT_NEW_TOKENS if chat else 16
    budgets = []
    for i, ids in enumerate(prompts):
        where = "messages" if chat else ("prompt" if len(prompts) == 1 else f"prompt[{i}]")
        try:
            check_prompt(ids, V, where)
        except RequestError as e:
            raise ApiError(400, str(e), param=where) from None
        try:
            n = new_token_budget(len(ids), S, body.max_tokens, default=default,
                                 field="max_tokens", prompt=where, bos=bos)  # fmt: skip
        except RequestError as e:
            raise ApiError(400, str(e), param=e.field, code="context_length_exceeded") from None
        budgets.append(n)
    return budgets


def _base_key(seed: int | None) -> jax.Array:
    """The request's key: choice j draws with fold_in(key, j), as `lm sample --seed` does."""
    seed = seed if seed is not None else secrets.randbits(31)
    try:
        return jax.random.PRNGKey(seed)
    except (OverflowError, ValueError, TypeError):
        raise ApiError(400, f"seed: {seed} is out of range", param="seed") from None


class Generation:
    """One request on the engine: n choices per prompt, the events they post, and the answer,
    as server-sent events (`stream`) or one JSON body (`collect`)."""

    def __init__(self, served: Served, body: _Body, texts: list[str], chat: bool):
        self.served, self.body, self.texts, self.chat = served, body, texts, chat
        if chat:
            self.want_lp = body.logprobs
            self.n_top = (body.top_logprobs or 0) if body.logprobs else 0
        else:
            self.want_lp, self.n_top = body.logprobs is not None, body.logprobs or 0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.choices: list[Choice] = []
        self.prompt_tokens = 0
        self.rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def submit(self, prompts: list[list[int]], budgets: list[int], sp: SamplingParams,
               key: jax.Array) -> None:  # fmt: skip
        """Queue every choice on the engine, all or none."""
        loop, n = asyncio.get_running_loop(), self.body.n
        stops = self.body.stops() + ([CHAT_STOP] if self.chat else [])
        for i, ids in enumerate(prompts):
            for j in range(n):
                c = Choice(self.served, i * n + j, stops, self.chat, self.queue, loop,
                           self.want_lp)  # fmt: skip
                c.seq = engine.Sequence(
                    ids, budgets[i], jax.random.fold_in(key, j), sp, c.feed, c.finish,
                    eos_id=self.served.tok.eos_id, top_logprobs=self.n_top,
                )  # fmt: skip
                self.choices.append(c)
        self.prompt_tokens = sum(len(ids) * n for ids in prompts)
        try:
            self.served.engine.submit([c.seq for c in self.choices])
        except engine.QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}", "rate_limit_exceeded",
                           code="queue_full") from None  # fmt: skip
        except engine.EngineStopped as e:
            raise ApiError(503, f"the server is not generating: {e}", "server_error") from None
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    def usage(self) -> dict:
        done = sum(c.completion_tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}  # fmt: skip

    def cancel_all(self) -> None:
        for c in self.choices:
            if c.finish_reason is None:
                self.served.engine.cancel(c.seq)

    def echo(self, c: Choice) -> str:
        """The prompt's text ahead of a completion, when the body asks for echo."""
        return self.texts[c.index // self.body.n] if not self.chat and self.body.echo else ""

    def logprobs(self, entries: list[dict]) -> dict | None:
        return _logprobs(entries, self.chat, self.n_top) if self.want_lp else None

    # ------------------------------------------------------------ streamed

    def _chunk(self, choice_list: list[dict], **extra) -> str:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return "data: " + json.dumps({"id": self.rid, "object": obj, "created": self.created,
                                      "model": self.served.name, "choices": choice_list,
                                      **extra}) + "\n\n"  # fmt: skip

    def _opening(self, c: Choice) -> str | None:
        """What a choice's stream starts with: the role (chat), or the echoed prompt."""
        if self.chat:
            part = {"delta": {"role": "assistant", "content": ""}}
        elif self.body.echo:
            part = {"text": self.echo(c)}
        else:
            return None
        return self._chunk([{"index": c.index, **part, "logprobs": None, "finish_reason": None}])

    def _event(self, ev: tuple) -> str:
        """One event from the engine thread as a server-sent event."""
        if ev[0] == "delta":
            _, idx, text, entries = ev
            part = {"delta": {"content": text}} if self.chat else {"text": text}
            return self._chunk([{"index": idx, **part, "logprobs": self.logprobs(entries),
                                 "finish_reason": None}])  # fmt: skip
        _, idx, reason = ev
        if reason.startswith("error"):
            return "data: " + json.dumps(ApiError(500, reason, "server_error").body()) + "\n\n"
        part = {"delta": {}} if self.chat else {"text": ""}
        return self._chunk([{"index": idx, **part, "logprobs": None,
                             "finish_reason": _finish(reason)}])  # fmt: skip

    async def events(self):
        try:
            for c in self.choices:
                if (first := self._opening(c)) is not None:
                    yield first
            open_ = len(self.choices)
            while open_:
                ev = await self.queue.get()
                open_ -= ev[0] == "done"
                yield self._event(ev)
            if (self.body.stream_options or {}).get("include_usage"):
                yield self._chunk([], usage=self.usage())
            yield "data: [DONE]\n\n"
        finally:  # the client went away early: free the slots
            self.cancel_all()

    def stream(self) -> StreamingResponse:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(self.events(), media_type="text/event-stream", headers=headers)

    # ------------------------------------------------------------ all at once

    async def collect(self) -> dict:
        try:
            open_ = len(self.choices)
            while open_:
                ev = await self.queue.get()
                open_ -= ev[0] == "done"
        finally:
            self.cancel_all()
        errors = [c.finish_reason for c in self.choices if c.finish_reason.startswith("error")]
        if errors:
            raise ApiError(500, errors[0], "server_error")
        return {"id": self.rid, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.served.name,
                "choices": [self._final(c) for c in self.choices],
                "usage": self.usage()}  # fmt: skip

    def _final(self, c: Choice) -> dict:
        lp, fin = self.logprobs(c.entries), _finish(c.finish_reason)
        if self.chat:
            message = {"role": "assistant", "content": c.text}
            return {"index": c.index, "message": message, "logprobs": lp, "finish_reason": fin}
        return {"index": c.index, "text": self.echo(c) + c.text, "logprobs": lp,
                "finish_reason": fin}  # fmt: skip


async def _generate(served: Served, body: _Body, prompts: list[list[int]], texts: list[str],
                    chat: bool, bos: bool = True):  # fmt: skip
    sp = _sampling_params(body)
    budgets = _budgets(served, body, prompts, chat, bos)
    gen = Generation(served, body, texts, chat)
    gen.submit(prompts, budgets, sp, _base_key(body.seed))
    return gen.stream() if body.stream else await gen.collect()


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


def _logprobs(entries: list[dict], chat: bool, n_top: int) -> dict:
    if chat:
        item = lambda e: {"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"]}
        return {"content": [{**item(e), "top_logprobs": [item(t) for t in e["top"][:n_top]]}
                            for e in entries]}  # fmt: skip
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top"][:n_top]} for e in entries],
        "text_offset": offsets,
    }


# ---------------------------------------------------------------- errors, auth, bodies


async def _api_error(request: Request, e: ApiError):
    headers = {"Retry-After": "1"} if e.status in (429, 503) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _invalid(request: Request, e: RequestValidationError):
    msg, param = _validation_message(e)
    return JSONResponse(ApiError(400, msg, param=param).body(), status_code=400)


async def _http(request: Request, e: StarletteHTTPException):
    type_ = "invalid_request_error" if e.status_code < 500 else "server_error"
    body = ApiError(e.status_code, str(e.detail), type_).body()
    return JSONResponse(body, status_code=e.status_code)


async def _crash(request: Request, e: Exception):  # a bug: answer 500, keep serving
    first = str(e).splitlines()[0] if str(e) else ""
    body = ApiError(500, f"{type(e).__name__}: {first}", "server_error").body()
    return JSONResponse(body, status_code=500)


async def _auth(request: Request, call_next):
    api_key, path = request.app.state.api_key, request.url.path
    if api_key and (path.startswith("/v1/") or path.startswith("/api/")):
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            body = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                            "invalid_request_error", code="invalid_api_key").body()  # fmt: skip
            return JSONResponse(body, status_code=401)
    return await call_next(request)


async def _body(request: Request, cls):
    """Parse and validate a JSON body ourselves: every failure is our 400."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        msg, param = _validation_message(e)
        raise ApiError(400, msg, param=param) from None


def _served(request: Request) -> Served:
    return request.app.state.served


def _check_model(served: Served, body: _Body) -> None:
    if body.model != served.name:
        raise ApiError(404, f"model {body.model!r} does not exist; this server has "
                       f"{served.name!r}", param="model", code="model_not_found")  # fmt: skip


# ---------------------------------------------------------------- the OpenAI routes


def _model_card(served: Served) -> dict:
    return {"id": served.name, "object": "model", "created": served.created,
            "owned_by": "lm", "max_model_len": served.m.max_seq_len}  # fmt: skip


async def models(request: Request):
    return {"object": "list", "data": [_model_card(_served(request))]}


async def model_card(name: str, request: Request):
    served = _served(request)
    if name != served.name:
        raise ApiError(404, f"model {name!r} does not exist", code="model_not_found")
    return _model_card(served)


async def health(request: Request):
    return {"status": "ok", **_served(request).engine.load}


async def completions(request: Request):
    served = _served(request)
    body = await _body(request, CompletionBody)
    _check_model(served, body)
    p = body.prompt
    if isinstance(p, str):
        texts, prompts = [p], [served.encode(p, "prompt")]
    elif all(isinstance(x, str) for x in p):
        texts, prompts = list(p), [served.encode(x, f"prompt[{i}]") for i, x in enumerate(p)]
    elif all(isinstance(x, int) for x in p):
        texts, prompts = [served.decode(p)], [list(p)]
    else:
        texts, prompts = [served.decode(x) for x in p], [list(x) for x in p]
    text_prompts = isinstance(p, str) or all(isinstance(x, str) for x in p)
    return await _generate(served, body, prompts, texts, chat=False, bos=text_prompts)


async def chat_completions(request: Request):
    served = _served(request)
    body = await _body(request, ChatBody)
    _check_model(served, body)
    text = chat_prompt({"role": m.role, "content": m.text()} for m in body.messages)
    if body.max_completion_tokens is not None:
        body.max_tokens = body.max_completion_tokens
    return await _generate(served, body, [served.encode(text, "messages")], [text], chat=True)


# ---------------------------------------------------------------- the inspector page


async def page():
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def favicon():
    return Response(status_code=204)


async def cjk_font():
    # the browser may have no CJK font either (a bare Debian has none): the page uses
    # the same packaged font as the figures, from here, so it works offline
    path = cjk_font_path()
    if path is None:
        raise ApiError(404, "no CJK font installed (pip install matplotlib-fontja)")
    kind = "font/collection" if path.suffix == ".ttc" else "font/ttf"
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "max-age=86400"})


async def static(name: str):
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise ApiError(404, f"no static file {name!r}")
    kinds = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    return FileResponse(path, media_type=kinds.get(path.suffix, "application/octet-stream"))


async def info(request: Request):
    return inspector.info(_served(request))


async def _inspector_call(request: Request, what: str):
    # The page's numbers: computed off the event loop, a bad prompt is a 400.
    body = await _body(request, InspectBody)
    try:
        return await asyncio.to_thread(getattr(inspector, what), _served(request), body)
    except ValueError as e:
        raise ApiError(400, str(e)) from None


async def inspect_(request: Request):
    return await _inspector_call(request, "inspect")


async def stages(request: Request):
    return await _inspector_call(request, "stages")


# ---------------------------------------------------------------- the app

ROUTES = [  # (method, path, handler)
    ("GET", "/v1/models", models),
    ("GET", "/v1/models/{name}", model_card),
    ("GET", "/health", health),
    ("POST", "/v1/completions", completions),
    ("POST", "/v1/chat/completions", chat_completions),
    ("GET", "/", page),
    ("GET", "/favicon.ico", favicon),
    ("GET", "/font/cjk", cjk_font),
    ("GET", "/static/{name}", static),
    ("GET", "/api/info", info),
    ("POST", "/api/inspect", inspect_),
    ("POST", "/api/stages", stages),
]
ERROR_HANDLERS = [
    (ApiError, _api_error),
    (RequestValidationError, _invalid),
    (StarletteHTTPException, _http),
    (Exception, _crash),
]


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    served = app.state.served
    if app.state.run_engine:
        served.engine.start()
    try:
        yield
    finally:
        served.engine.stop()


def create_app(served: Served, api_key: str | None = None, run_engine: bool = True) -> FastAPI:
    """The FastAPI app over `served`: the engine's thread starts with the app and stops with
    it. `run_engine=False` leaves the stepping to the caller (a test that steps by hand)."""
    app = FastAPI(title="lm serve", lifespan=_lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.served, app.state.api_key, app.state.run_engine = served, api_key, run_engine
    for kind, handler in ERROR_HANDLERS:
        app.add_exception_handler(kind, handler)
    app.middleware("http")(_auth)
    for method, path, handler in ROUTES:
        app.add_api_route(path, handler, methods=[method])
    return app


# ---------------------------------------------------------------- running it


def load_served(run: str, slots: int, max_waiting: int, chunk: int, name: str | None = None):
    """Open --run / --model (a run directory or an `lm export` file) as a Served."""
    cfg, tok, load = open_run(run)
    need_transformer(cfg, run, "serve")
    p = Path(run)
    name = name or (p.stem if p.is_file() else p.resolve().name)
    return Served(cfg, tok, load(), name, slots=slots, max_waiting=max_waiting, chunk=chunk)


def make_server(app, host: str, port: int, log_level: str = "warning",
                limit_concurrency: int | None = None):  # fmt: skip
    """A uvicorn Server for `app` (run it with .run(sockets=[sock]) on a `bind` socket)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            limit_concurrency=limit_concurrency, timeout_graceful_shutdown=3,
                            access_log=log_level in ("info", "debug"))  # fmt: skip
    return uvicorn.Server(config)


def bind(host: str, port: int):
    """A listening TCP socket on host:port (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = e.strerror or e
        raise ServeError(f"--host {host} --port {port}: cannot listen ({why})") from None
    sock.listen(2048)
    return sock
