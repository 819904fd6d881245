"""Continuous batching: many independent generations sharing one fixed-size decode batch.

`lm.inference.sampling.generate` decodes one batch of prompts from start to finish. A server gets
requests at any time, with different prompts, lengths and sampling settings, so here the
batch is a fixed set of B *slots*, each with its own rows of one KV cache [L, B, S, K, H]
(S = the model's context) and its own sampling parameters and random key. Between decode
steps (at step boundaries) finished slots are handed to waiting sequences; every device call
has the same shapes, so nothing recompiles as requests come and go.

The device side is pure functions over explicit state (`Slots`), jit-compiled:
  * `admit(params, slots, rows, tokens, lens, keys, temperature, top_k, top_p, min_p)`
    prefills new prompts (right-padded to a power of two >= 16; a row equal to B is padding,
    which the scatters drop) through `sampling.prefill_last`, writes their keys/values
    into their slots' cache rows, and draws each one's first token.
  * `decode(params, slots, steps=k, rows=R, span=W)` runs k decode steps for the first R
    slots in one on-device `lax.scan` over `sampling.decode_forward` (the single-token step
    `generate` uses), reading only the first W cache positions. A step reads all the cache
    it is given, so R and W (powers of two covering the busy slots, which are packed at the
    front, and their positions) are what keep one busy slot in a 32-slot engine as fast as
    `lm sample`. Idle slots within R compute too and their tokens are ignored.
Token t of a sequence is drawn with `fold_in(key, t)` from the sequence's own key, with the
same processors in the same order as `sampling.sample_token`, so a sequence's tokens do not
depend on which slot it got or what else was in the batch, and equal `sampling.generate`'s
for the same key (up to float rounding of the batched matmuls).

The host side is `Engine`: a bounded waiting queue, the slot table, and `step()`, which
admits waiting sequences into free slots, runs one decode chunk and hands each sequence its
new tokens through its `feed` callback (which may end it early, e.g. at a stop string).
`Engine.start()` runs `step()` on a background thread for a server; tests call it directly.
A sequence's sampling is a `SamplingParams` (lm.inference.request), checked when it was made.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lm.config import ModelConfig
from lm.hardware import precision
from lm.inference import request, sampling
from lm.inference.request import SamplingParams
from lm.model import transformer

MAX_TOP_LOGPROBS = 20  # the most alternatives a request may ask for (OpenAI's limit)


class Slots(NamedTuple):
    """Everything the device keeps per slot; B rows each."""

    cache: transformer.KVCache  # [L, B, S, K, H] each
    tok_B: jax.Array  # int32: the last drawn token, fed at the next step
    pos_B: jax.Array  # int32: the position (== cache slot) tok_B is written at
    t_B: jax.Array  # int32: index of the next token to draw (the fold_in counter)
    key_B: jax.Array  # uint32 [B, 2]: each sequence's own key
    temperature_B: jax.Array  # float32, 0 = greedy
    top_k_B: jax.Array  # int32, V = off
    top_p_B: jax.Array  # float32, 1 = off
    min_p_B: jax.Array  # float32, 0 = off


class Drawn(NamedTuple):
    """What one draw returns per row (a leading [k] axis after a k-step decode)."""

    tok_B: jax.Array
    logprob_B: jax.Array  # of the model's own distribution (raw logits, temperature 1)
    top_ids_BE: jax.Array  # [B, MAX_TOP_LOGPROBS] (E = 0 when no slot asked)
    top_logprobs_BE: jax.Array


def init_slots(cfg: ModelConfig, batch: int) -> Slots:
    dtype = jnp.dtype(precision.compute_dtype(cfg))
    shape = (cfg.n_layers, batch, cfg.max_seq_len, cfg.kv_heads, cfg.head_dim)
    zeros = lambda d: jnp.zeros((batch,), d)
    return Slots(
        transformer.KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)),
        zeros(jnp.int32),
        zeros(jnp.int32),
        zeros(jnp.int32),
        jnp.zeros((batch, 2), jnp.uint32),
        zeros(jnp.float32),
        jnp.full((batch,), cfg.vocab_size, jnp.int32),
        jnp.ones((batch,), jnp.float32),
        zeros(jnp.float32),
    )


def filter_top_k_rows(logits_BV: jax.Array, k_B: jax.Array) -> jax.Array:
    """`sampling.filter_top_k` with a k per row (k >= V keeps everything; ties kept)."""
    V = logits_BV.shape[-1]
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)
    kth_B1 = jnp.take_along_axis(sorted_BV, jnp.clip(k_B - 1, 0, V - 1)[:, None], axis=-1)
    return jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)


def draw_rows(logits_BV, key_B, t_B, temperature_B, top_k_B, top_p_B, min_p_B, n_top: int):
    """One token per row with per-row settings: `sampling.sample_token`'s processors in its
    order (temperature, top-k, top-p, min-p), each row drawn with fold_in(key_b, t_b)."""
    logits_BV = logits_BV.astype(jnp.float32)
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    safe_t = jnp.where(temperature_B > 0, temperature_B, 1.0)
    z_BV = sampling.apply_temperature(logits_BV, safe_t)
    z_BV = filter_top_k_rows(z_BV, top_k_B)
    z_BV = sampling.filter_top_p(z_BV, top_p_B)
    z_BV = sampling.filter_min_p(z_BV, min_p_B)

    def one(key, t, z_V):  # the [1, V] shape sample_token draws with: the same bits
        return jax.random.categorical(jax.random.fold_in(key, t), z_V[None], axis=-1)[0]

    drawn_B = jax.vmap(one)(key_B, t_B, z_BV).astype(jnp.int32)
    tok_B = jnp.where(temperature_B > 0, drawn_B, greedy_B)
    logp_BV = jax.nn.log_softmax(logits_BV, axis=-1)
    lp_B = jnp.take_along_axis(logp_BV, tok_B[:, None], axis=-1)[:, 0]
    if n_top:
        top_lp, top_ids = jax.lax.top_k(logp_BV, n_top)
    else:
        top_lp = jnp.zeros((logits_BV.shape[0], 0), jnp.float32)
        top_ids = jnp.zeros((logits_BV.shape[0], 0), jnp.int32)
    return Drawn(tok_B, lp_B, top_ids.astype(jnp.int32), top_lp)


@functools.partial(jax.jit, static_argnames=("cfg", "n_top"), donate_argnames=("slots",))
def admit(params, slots: Slots, rows_n, tokens_nP, lens_n, key_n, temp_n, top_k_n, top_p_n,
          min_p_n, *, cfg: ModelConfig, n_top: int) -> tuple[Slots, Drawn]:  # fmt: skip
    """Prefill n right-padded prompts into slots `rows_n` and draw their first tokens.

    Rows equal to B (padding) are computed and dropped by the scatters."""
    params = sampling.operand_params(params, cfg)
    P = tokens_nP.shape[1]
    last_nV, cache_n = sampling.prefill_last(params, cfg, tokens_nP, lens_n, P)
    zero_n = jnp.zeros_like(lens_n)
    drawn = draw_rows(last_nV, key_n, zero_n, temp_n, top_k_n, top_p_n, min_p_n, n_top)
    put = lambda a, v: a.at[rows_n].set(v, mode="drop")
    cache = transformer.KVCache(
        slots.cache.k_LBSKH.at[:, rows_n, :P].set(cache_n.k_LBSKH, mode="drop"),
        slots.cache.v_LBSKH.at[:, rows_n, :P].set(cache_n.v_LBSKH, mode="drop"),
    )
    slots = Slots(
        cache,
        put(slots.tok_B, drawn.tok_B),
        put(slots.pos_B, lens_n),
        put(slots.t_B, zero_n + 1),
        put(slots.key_B, key_n),
        put(slots.temperature_B, temp_n),
        put(slots.top_k_B, top_k_n),
        put(slots.top_p_B, top_p_n),
        put(slots.min_p_B, min_p_n),
    )
    return slots, drawn


@functools.partial(
    jax.jit, static_argnames=("cfg", "steps", "n_top", "rows", "span"), donate_argnames=("slots",)
)
def decode(params, slots: Slots, *, cfg: ModelConfig, steps: int, n_top: int,
           rows: int | None = None, span: int | None = None):  # fmt: skip
    """`steps` decode steps for the first `rows` slots (default all), reading only the first
    `span` cache positions (default all; it must cover every busy slot's position + steps):
    (slots, Drawn with a leading [steps] axis). Each step reads the whole cache it is given,
    so skipping idle rows and unused positions is most of a step's cost."""
    params = sampling.operand_params(params, cfg)
    R = slots.tok_B.shape[0] if rows is None else rows
    last = (cfg.max_seq_len if span is None else span) - 1
    head = jax.tree.map(lambda a: a[:R], slots._replace(cache=None))

    def step(carry, _):
        cache, s = carry
        # a slot past its sequence's end keeps stepping until the boundary; clamping keeps
        # its writes inside its own row and the span (the host never reads them)
        pos_B = jnp.minimum(s.pos_B, last)
        logits_BV, cache = sampling.decode_forward(params, cfg, s.tok_B, pos_B, cache, span)
        d = draw_rows(logits_BV, s.key_B, s.t_B, s.temperature_B, s.top_k_B, s.top_p_B,
                      s.min_p_B, n_top)  # fmt: skip
        s = s._replace(tok_B=d.tok_B, pos_B=s.pos_B + 1, t_B=s.t_B + 1)
        return (cache, s), d

    (cache, head), drawn = jax.lax.scan(step, (slots.cache, head), None, length=steps)
    put = lambda full, part: full.at[:R].set(part)
    slots = Slots(cache, *(put(f, p) for f, p in zip(slots[1:], head[1:], strict=True)))
    return slots, drawn


def _buckets(lo: int, hi: int, factor: int = 2) -> list[int]:
    """lo, factor lo, factor^2 lo, ... below hi, then hi: the sizes that compile."""
    out, n = [], lo
    while n < hi:
        out.append(n)
        n *= factor
    return [*out, hi]


def _bucket(n: int, lo: int, hi: int, factor: int = 2) -> int:
    return next(b for b in _buckets(lo, hi, factor) if b >= min(n, hi))


def prompt_bucket(n: int, S: int) -> int:
    """The padded prompt length a prefill runs at (right padding is never attended to)."""
    return _bucket(n, min(16, S), S)


ROW_FACTOR = 4  # busy-row counts compile at 1, 4, 16, ... (fewer shapes; idle rows are cheap)


def decode_shape(busy: list[int], last_pos: list[int], steps: int, B: int, S: int):
    """(rows, span) for a decode call: rows covers the busy slot indices, span each busy
    slot's position (where its next token goes) plus the steps; both rounded up to a few
    bucket sizes so that few shapes compile."""
    rows = _bucket(max(busy) + 1, 1, B, ROW_FACTOR)
    span = _bucket(max(last_pos) + steps, min(64, S), S)
    return rows, span


def decode_shapes(B: int, S: int) -> list[tuple[int, int]]:
    """Every (rows, span) `decode_shape` can return, the likeliest first."""
    return [(r, w) for r in _buckets(1, B, ROW_FACTOR) for w in _buckets(min(64, S), S)]


# ---------------------------------------------------------------- the host side


class QueueFull(RuntimeError):
    """The waiting queue cannot take the sequences (a server answers 429)."""


class EngineStopped(RuntimeError):
    """The engine is shutting down or has failed (a server answers 503)."""


@dataclasses.dataclass
class Sequence:
    """One generation: a prompt (ids, BOS included), a budget, how to sample, and where
    tokens go.

    `feed(tokens, logprobs, tops)` is called on the engine's thread with each batch of new
    tokens (tops: per token, [(id, logprob)] of the top `top_logprobs`) and returns True to
    end the sequence (a stop string); `finish(reason)` is called once at the end with
    "stop" (EOS or feed), "length" (the budget), "cancelled" or "error: ...".
    """

    prompt: list[int]
    max_new: int
    key: Any  # a raw jax PRNG key, uint32 [2] (jax.random.PRNGKey)
    sampling: SamplingParams
    feed: Callable[[list[int], list[float], list[list[tuple[int, float]]]], bool]
    finish: Callable[[str], None]
    eos_id: int | None = None
    top_logprobs: int = 0  # alternatives to report per token, 0..MAX_TOP_LOGPROBS
    cancelled: bool = False
    generated: int = 0
    id: int = dataclasses.field(default_factory=itertools.count().__next__)


class Engine:
    """Slots, a bounded waiting queue and the step loop around `admit` and `decode`.

    `submit(seqs)` queues sequences atomically (all or none: QueueFull) from any thread;
    `step()` does one step boundary's work; `start()` runs steps on a thread until `stop()`.
    `chunk` decode steps run per device call: more is faster, but finished slots idle and
    new sequences wait for up to that many steps.
    """

    def __init__(self, params, cfg: ModelConfig, slots: int = 16, max_waiting: int = 256,
                 chunk: int = 4, pad_id: int = 0):  # fmt: skip
        if slots < 1 or max_waiting < 0 or chunk < 1:
            raise ValueError("slots and chunk must be >= 1, max_waiting >= 0")
        self.params, self.cfg, self.B = params, cfg, slots
        self.chunk, self.pad_id, self.max_waiting = chunk, pad_id, max_waiting
        self.slots = init_slots(cfg, slots)
        self.active: list[Sequence | None] = [None] * slots
        self.waiting: deque[Sequence] = deque()
        self.lock = threading.Condition()
        self.stopped = False
        self.failed: str | None = None
        self._thread: threading.Thread | None = None
        self._warming: threading.Thread | None = None
        self.stats = {"steps": 0, "tokens": 0, "admitted": 0, "busy_slot_steps": 0}

    # -------------------------------------------------------- submitting

    def check(self, seq: Sequence) -> None:
        """Raise ValueError (one line) when the sequence cannot run on this model (its
        SamplingParams were checked when they were made)."""
        if not isinstance(seq.sampling, SamplingParams):
            raise TypeError(f"sampling: a SamplingParams, not a {type(seq.sampling).__name__}")
        request.check_prompt(seq.prompt, self.cfg.vocab_size)
        request.new_token_budget(len(seq.prompt), self.cfg.max_seq_len, seq.max_new,
                                 field="max_new")  # fmt: skip
        if not 0 <= seq.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")

    def submit(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            self.check(s)
        with self.lock:
            if self.stopped or self.failed:
                raise EngineStopped(self.failed or "the engine is shutting down")
            if len(self.waiting) + len(seqs) > self.max_waiting:
                raise QueueFull(
                    f"{len(self.waiting)} sequences are waiting (the limit is "
                    f"{self.max_waiting}); retry later"
                )
            self.waiting.extend(seqs)
            self.lock.notify_all()

    def cancel(self, seq: Sequence) -> None:
        """End a sequence at the next boundary (its client went away)."""
        seq.cancelled = True
        with self.lock:
            self.lock.notify_all()

    @property
    def load(self) -> dict[str, int]:
        with self.lock:
            busy = sum(s is not None for s in self.active)
            return {"slots": self.B, "busy": busy, "waiting": len(self.waiting)}

    # -------------------------------------------------------- the step loop

    def _end(self, b: int, reason: str) -> None:
        seq = self.active[b]
        self.active[b] = None
        if seq is not None:
            seq.finish(reason)

    def _n_top(self) -> int:
        return MAX_TOP_LOGPROBS if any(
            s is not None and s.top_logprobs for s in self.active
        ) else 0  # fmt: skip

    def _deliver(self, b: int, toks, lps, top_ids, top_lps) -> None:
        """Hand slot b's new tokens to its sequence; end it at EOS, budget or feed's word."""
        seq = self.active[b]
        assert seq is not None
        room = seq.max_new - seq.generated
        toks, lps = list(toks[:room]), list(lps[:room])
        reason = "length" if len(toks) == room else None
        if seq.eos_id is not None and seq.eos_id in toks:
            cut = toks.index(seq.eos_id) + 1
            toks, lps, reason = toks[:cut], lps[:cut], "stop"
        n = seq.top_logprobs
        tops = [
            list(zip(map(int, top_ids[j][:n]), map(float, top_lps[j][:n]), strict=True))
            for j in range(len(toks))
        ]
        seq.generated += len(toks)
        self.stats["tokens"] += len(toks)
        if seq.feed([int(t) for t in toks], [float(x) for x in lps], tops):
            reason = "stop"
        if reason is not None:
            self._end(b, reason)

    def step(self) -> bool:
        """One step boundary: drop cancelled sequences, admit waiting ones into free slots,
        decode one chunk. Returns False when there was nothing to do."""
        with self.lock:
            for b, seq in enumerate(self.active):
                if seq is not None and seq.cancelled:
                    self._end(b, "cancelled")
            while self.waiting and self.waiting[0].cancelled:
                self.waiting.popleft().finish("cancelled")
            # lowest free index first: busy slots stay packed at the front, so a decode
            # call covers few rows
            free = [b for b, s in enumerate(self.active) if s is None]
            new: list[tuple[int, Sequence]] = []
            while free and self.waiting:
                seq = self.waiting.popleft()
                if not seq.cancelled:
                    new.append((free.pop(0), seq))
                else:
                    seq.finish("cancelled")
            for b, seq in new:
                self.active[b] = seq
        if new:
            self._admit(new)
        if not any(s is not None for s in self.active):
            return bool(new)
        n_top = self._n_top()
        busy = [b for b, s in enumerate(self.active) if s is not None]
        # the position each busy slot's next token goes to: prompt + tokens so far - 1
        pos = [len(self.active[b].prompt) + self.active[b].generated - 1 for b in busy]
        rows, span = decode_shape(busy, pos, self.chunk, self.B, self.cfg.max_seq_len)
        self.slots, d = decode(self.params, self.slots, cfg=self.cfg, steps=self.chunk,
                               n_top=n_top, rows=rows, span=span)  # fmt: skip
        toks, lps, top_ids, top_lps = jax.device_get(d)
        self.stats["steps"] += self.chunk
        for b in busy:
            self.stats["busy_slot_steps"] += self.chunk
            self._deliver(b, toks[:, b], lps[:, b], top_ids[:, b], top_lps[:, b])
        return True

    def _admit(self, new: list[tuple[int, Sequence]]) -> None:
        # one prefill per sequence: the prompt bucket is then the only shape that varies,
        # so every shape can be compiled before the first request (warmup)
        for b, seq in new:
            self._admit_one(b, seq)

    def _admit_one(self, b: int, seq: Sequence) -> None:
        sp, V = seq.sampling, self.cfg.vocab_size
        P = prompt_bucket(len(seq.prompt), self.cfg.max_seq_len)
        tokens = np.full((1, P), self.pad_id, np.int32)
        tokens[0, : len(seq.prompt)] = seq.prompt
        f32 = lambda x: np.asarray([x], np.float32)
        self.slots, d = admit(
            self.params, self.slots, np.asarray([b], np.int32), tokens,
            np.asarray([len(seq.prompt)], np.int32), np.asarray(seq.key, np.uint32)[None],
            f32(sp.temperature), np.asarray([V if sp.top_k is None else min(sp.top_k, V)],
            np.int32), f32(1.0 if sp.top_p is None else sp.top_p),
            f32(0.0 if sp.min_p is None else sp.min_p), cfg=self.cfg,
            n_top=MAX_TOP_LOGPROBS if seq.top_logprobs else 0,
        )  # fmt: skip
        toks, lps, top_ids, top_lps = jax.device_get(d)
        self.stats["admitted"] += 1
        self._deliver(b, toks, lps, top_ids, top_lps)

    def run_until_idle(self, max_steps: int = 100_000) -> None:
        """Step until nothing is active or waiting (tests, batch jobs)."""
        for _ in range(max_steps):
            if not self.step() and not self.waiting:
                return
        raise RuntimeError(f"still busy after {max_steps} steps")

    # -------------------------------------------------------- the background thread

    def warmup(self, background: bool = False) -> float:
        """Compile the prefill and decode shapes (an idle engine only), so that requests do
        not wait for compilations: every prompt bucket and (busy rows, cache span) pair.
        Requests with logprobs compile their own variants on first use. With `background`,
        only the shapes of a first short request compile now and a thread compiles the rest
        on a scratch copy of the state while the engine serves. Returns the seconds taken."""
        t0 = time.perf_counter()
        with self.lock:
            if any(s is not None for s in self.active) or self.waiting:
                raise RuntimeError("warmup needs an idle engine")
        S = self.cfg.max_seq_len
        prompts = _buckets(min(16, S), S)
        shapes = decode_shapes(self.B, S)
        if background:
            self.slots = self._compile(self.slots, prompts[:1], shapes[:1])
            scratch = init_slots(self.cfg, self.B)
            self._warming = threading.Thread(
                target=self._compile, args=(scratch, prompts, shapes), daemon=True,
                name="lm-engine-compile",
            )  # fmt: skip
            self._warming.start()
        else:
            self.slots = self._compile(self.slots, prompts, shapes)
        return time.perf_counter() - t0

    def _compile(self, slots: Slots, prompts: list[int], shapes: list[tuple[int, int]]):
        """Run admit and decode once per shape on `slots` (idle rows only), returning them."""
        V, one = self.cfg.vocab_size, np.ones(1, np.float32)
        for P in prompts:  # row B is a padding row: nothing is written
            if self.stopped:  # a compile cut off by the interpreter's exit aborts it
                return slots
            slots, d = admit(
                self.params, slots, np.asarray([self.B], np.int32), np.zeros((1, P), np.int32),
                np.ones(1, np.int32), np.zeros((1, 2), np.uint32), one,
                np.asarray([V], np.int32), one, 0 * one, cfg=self.cfg, n_top=0,
            )  # fmt: skip
        for rows, span in shapes:  # idle rows: whatever they compute is overwritten later
            if self.stopped:
                return slots
            slots, d = decode(self.params, slots, cfg=self.cfg, steps=self.chunk, n_top=0,
                              rows=rows, span=span)  # fmt: skip
        jax.block_until_ready(slots)
        return slots

    def _loop(self) -> None:
        while True:
            with self.lock:
                while (
                    not self.stopped
                    and not self.waiting
                    and not any(s is not None for s in self.active)
                ):
                    self.lock.wait()
                if self.stopped:
                    break
            try:
                self.step()
            except Exception as e:  # a device failure: fail what is in flight, keep serving
                why = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                with self.lock:
                    for b in range(self.B):
                        self._end(b, why)
                self.slots = init_slots(self.cfg, self.B)
        with self.lock:
            for b in range(self.B):
                self._end(b, "cancelled")
            while self.waiting:
                self.waiting.popleft().finish("cancelled")

    def start(self) -> Engine:
        """Run steps on a background thread until `stop()`; a second call does nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lm-engine", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """The background thread is alive (`start` was called and the loop has not ended)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify_all()
        for t in (self._thread, self._warming):
            if t is not None:
                t.join(timeout)
