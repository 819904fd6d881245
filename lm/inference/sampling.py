"""Sampling from a trained model: logit processors, KV-cache generation, streaming.

Logit processors are pure functions over logits [B, V] (jit-able, vectorised over the batch):
`apply_temperature`, `filter_top_k`, `filter_top_p`, `filter_min_p`; `process_logits` chains
them in the usual order (temperature, top-k, top-p, min-p, as Hugging Face does) and
`sample_token` draws one token per row. Filtered tokens get -inf logits; ties at a cut-off
are all kept (so top-k may keep more than k tokens when logits tie exactly).

Generation (`generate`, `stream_generate`):
  * Prompts are RIGHT-padded to a common length P with `pad_id`. The model writes keys and
    values into the cache at slot == position, so with right padding every sequence keeps
    positions 0..n_b-1 for its prompt and the natural positions for its continuation;
    learned positions and RoPE need no offset. The prefill (`model.block` over the padded
    prompts) takes a kv mask slot < n_b, so no query ever sees padding. A decode step for
    sequence b at position pos_b = n_b + t - 1 attends to cached slots < pos_b (its prompt
    and earlier output, never padding: pad slots from n_b on are overwritten before the mask
    reaches them) plus its own new key, then stores that key at slot pos_b.
  * The cache holds P + max_new_tokens slots (P rounded up to a multiple of 16 while that
    still fits, so nearby prompt lengths share one compilation). If the longest prompt plus
    max_new_tokens exceeds cfg.max_seq_len, `generate` raises a one-line ValueError before
    any compute: learned position embeddings do not exist past max_seq_len, and RoPE models
    were never trained there.
  * The whole decode runs on device in one `lax.while_loop` (one jitted call, no Python per
    token) that stops once every sequence has emitted `eos_id` or the budget is spent.
    Finished sequences keep computing (the batch is fixed) but emit pad_id.
  * The layer loop is a `lax.scan` with the stacked cache [L, B, S, K, H] as scanned xs. In
    the prefill the ys are the whole updated cache. In the decode step the ys are only each
    layer's new key/value [L, B, K, H], written with one scatter into the loop-carried cache,
    which XLA updates in place: returning the whole cache as ys costs a full cache copy per
    token (measured 2x slower at batch 16 on CPU). That is also why the decode step has its
    own single-token step (`_decode_attention`, around the same `model.attend`) instead of
    calling `model.block`.
  * Token t of every sequence is drawn with `jax.random.fold_in(key, t)`, so the result does
    not depend on how decoding is chunked: `stream_generate` (chunks of C tokens, each chunk
    one on-device loop, the same compiled function `generate` uses) yields exactly the
    tokens `generate` returns, and `generate_nocache` (the slow reference that re-runs
    `model.apply` on the whole sequence per token) draws from the same keys.

Streaming uses chunks rather than `jax.debug.callback`: a host callback per token forces a
device->host sync inside the loop on every step, while chunking keeps the loop on device and
only syncs every C tokens; the chunk size trades latency for throughput.

How tokens are drawn is a `SamplingParams` (lm.inference.request, which checks it once, when it
is made); the logit processors take the raw values, which may be traced or per-row arrays.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lm.config import ModelConfig
from lm.hardware import precision
from lm.inference import request
from lm.inference.request import (
    DEFAULT_SAMPLING,
    SamplingParams,
)
from lm.model import transformer

Params = dict[str, Any]


# ---------------------------------------------------------------- logit processors


def _col(x: Any) -> jax.Array:
    """A scalar or per-row [B] parameter, shaped to broadcast against [B, V]."""
    x = jnp.asarray(x, jnp.float32)
    return x[:, None] if x.ndim == 1 else x


def apply_temperature(logits_BV: jax.Array, temperature: Any) -> jax.Array:
    """logits / temperature, temperature > 0 (scalar or [B]); greedy is `sample_token`'s job."""
    return logits_BV.astype(jnp.float32) / _col(temperature)


def filter_top_k(logits_BV: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits per row (k a Python int: lax.top_k needs a static k)."""
    k = min(int(k), logits_BV.shape[-1])
    kth_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)


def filter_top_p(logits_BV: jax.Array, p: Any) -> jax.Array:
    """Nucleus: keep the smallest top set whose probability reaches p (scalar or [B]).

    Token i (in descending order) is kept when the mass strictly before it is < p, which keeps
    exactly the smallest prefix with cumulative mass >= p and always the top token.
    """
    p_B1 = _col(p)
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # descending
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # p == 1 keeps everything even where rounding pushes the running mass to 1 early.
    keep_BV = (before_BV < p_B1) | (p_B1 >= 1.0)
    n_keep_B1 = jnp.maximum(keep_BV.sum(-1, keepdims=True), 1)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, n_keep_B1 - 1, axis=-1)
    return jnp.where(logits_BV >= cutoff_B1, logits_BV, -jnp.inf)


def filter_min_p(logits_BV: jax.Array, min_p: Any) -> jax.Array:
    """Keep tokens with prob >= min_p * max prob, i.e. logit >= max logit + log(min_p)."""
    max_B1 = logits_BV.max(-1, keepdims=True)
    # log(0) = -inf keeps every token, so min_p = 0 is a no-op without a special case.
    return jnp.where(logits_BV >= max_B1 + jnp.log(_col(min_p)), logits_BV, -jnp.inf)


def process_logits(
    logits_BV: jax.Array,
    temperature: Any = 1.0,
    top_k: int | None = None,
    top_p: Any = None,
    min_p: Any = None,
) -> jax.Array:
    """Temperature (> 0), then top-k, top-p and min-p; None skips a filter."""
    logits_BV = apply_temperature(logits_BV, temperature)
    if top_k is not None:
        logits_BV = filter_top_k(logits_BV, top_k)
    if top_p is not None:
        logits_BV = filter_top_p(logits_BV, top_p)
    if min_p is not None:
        logits_BV = filter_min_p(logits_BV, min_p)
    return logits_BV


def sample_token(
    key: jax.Array,
    logits_BV: jax.Array,
    temperature: Any = 1.0,
    top_k: int | None = None,
    top_p: Any = None,
    min_p: Any = None,
) -> jax.Array:
    """One token per row, int32 [B]. Deterministic given `key`.

    temperature 0 is greedy (argmax); a Python 0 skips the filters and the random draw
    entirely, while a traced or per-row [B] temperature picks argmax where it is 0.
    temperature, top_p and min_p may be traced scalars or [B]; top_k is a static int. Concrete
    values are checked by `request.check_value`, the rules SamplingParams is checked by.
    """
    for name, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                    ("min_p", min_p)):  # fmt: skip
        if not isinstance(v, jax.core.Tracer):  # a traced value is its caller's to check
            request.check_value(name, v, per_row=True)
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if isinstance(temperature, numbers.Real) and temperature == 0:
        return greedy_B
    t = jnp.asarray(temperature, jnp.float32)
    safe_t = jnp.where(t > 0, t, 1.0)  # no 0-division on the rows that end up greedy
    logits_BV = process_logits(logits_BV, safe_t, top_k, top_p, min_p)
    drawn_B = jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)
    return jnp.where(t > 0, drawn_B, greedy_B)


# ---------------------------------------------------------------- KV-cache decoding


class DecodeState(NamedTuple):
    """Everything the decode loop carries; lives on device between chunks."""

    cache: transformer.KVCache  # [L, B, S, K, H] each
    tok_B: jax.Array  # the last sampled token, fed at the next step
    pos_B: jax.Array  # the position (== cache slot) tok_B will be written at
    out_BR: jax.Array  # generated tokens, pad_id after a sequence's EOS
    done_B: jax.Array  # the sequence has emitted eos_id
    t: jax.Array  # tokens generated so far (same for every sequence)


class _Sampling(NamedTuple):
    """Traced sampling values (None: filter off). top_k and greedy are static, elsewhere."""

    temperature: jax.Array | None
    top_p: jax.Array | None
    min_p: jax.Array | None


def _need_params(sp: SamplingParams) -> None:
    if not isinstance(sp, SamplingParams):  # e.g. a bare temperature, as before SamplingParams
        raise TypeError(f"sp: a SamplingParams, not a {type(sp).__name__}")


def _sampling(sp: SamplingParams) -> tuple[_Sampling, int | None, bool]:
    """The traced values, the static top_k and whether it is greedy: a new temperature or
    top-p reuses the compiled loop, a new top_k compiles one."""
    _need_params(sp)
    if sp.greedy:  # the filters cannot change the argmax; skip them (and their sorts)
        return _Sampling(None, None, None), None, True
    f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
    return _Sampling(f32(sp.temperature), f32(sp.top_p), f32(sp.min_p)), sp.top_k, False


def _draw(key, t, logits_BV, traced: _Sampling, top_k, greedy):
    if greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return sample_token(jax.random.fold_in(key, t), logits_BV, traced.temperature, top_k,
                        traced.top_p, traced.min_p)  # fmt: skip


def operand_params(params: Params, cfg: ModelConfig) -> Params:
    """The matmul weights cast once, outside the decode loop, to the operand dtype that
    `model.matmul` casts them to on every call (the rest stays as it is)."""
    out = dict(params)
    out["layers"] = {
        k: transformer.operands(cfg, a)[0] if k.startswith("w") else a
        for k, a in params["layers"].items()
    }
    if "unembed" in params:
        out["unembed"] = transformer.operands(cfg, params["unembed"])[0]
    return out


def forward_cached(params, cfg, tokens_BT, pos_BT, cache: transformer.KVCache, kv_mask_BS=None):
    """The prefill: all layers over tokens_BT via `model.block`, writing keys/values at pos_BT.

    A scan over layers with the stacked cache as xs/ys; returns logits [B, T, V] and the cache.
    """
    x_BTD = transformer.embed(params, tokens_BT, pos_BT, cfg)

    def layer(x_BTD, xs):
        p, k_BSKH, v_BSKH = xs
        x_BTD, (k_BSKH, v_BSKH) = transformer.block(
            p, x_BTD, pos_BT, cfg, kv=(k_BSKH, v_BSKH), kv_mask_BS=kv_mask_BS
        )
        return x_BTD, (k_BSKH, v_BSKH)

    x_BTD, (k_LBSKH, v_LBSKH) = jax.lax.scan(
        layer, x_BTD, (params["layers"], cache.k_LBSKH, cache.v_LBSKH)
    )
    logits_BTV = transformer.unembed(params, x_BTD, cfg).astype(jnp.float32)
    return logits_BTV, transformer.KVCache(k_LBSKH, v_LBSKH)


def _decode_attention(p, x_BD, pos_B, k_BSKH, v_BSKH, cfg: ModelConfig):
    """`model.attention` for one new token per sequence, leaving the cache untouched.

    Attends to the cached slots before pos_B (prompt and earlier output: never padding) plus
    the token's own key/value (a second block of keys, slot S), and returns those for the
    caller to store: writing into the layer's cache slice inside the layer scan makes XLA
    copy the whole cache every step (about 2x slower at batch 16 on CPU), and concatenating
    the new key onto the cache costs a copy of the layer's cache (3% at batch 16).
    """
    S = k_BSKH.shape[1]
    pos_B1 = pos_B[:, None]
    q_B1NH, k_B1KH, v_B1KH = transformer.qkv(p, x_BD[:, None], pos_B1, cfg)
    # Round the new key/value through the cache dtype so they match what later steps read.
    k_B1KH, v_B1KH = k_B1KH.astype(k_BSKH.dtype), v_B1KH.astype(v_BSKH.dtype)
    keys_BSKH, values_BSKH = (k_BSKH, k_B1KH), (v_BSKH, v_B1KH)
    mask_B1S = (jnp.arange(S + 1)[None, :] < pos_B1) | (jnp.arange(S + 1) == S)[None, :]
    o_B1NH, _ = transformer.attend_heads(
        q_B1NH, keys_BSKH, values_BSKH, mask_B1S[:, None], cfg, cached=True
    )
    return transformer.attention_out(p, o_B1NH, cfg)[:, 0], k_B1KH[:, 0], v_B1KH[:, 0]


def decode_forward(params, cfg, tok_B, pos_B, cache: transformer.KVCache, span: int | None = None):
    """One decode step for every sequence: logits [B, V] and the cache with pos_B filled.

    A scan over layers with the stacked cache as xs and each layer's new key/value as ys; the ys
    then go into the cache with one scatter, in place on the while-loop carry. The B sequences are
    the cache's first B rows (lm.inference.engine passes a larger cache whose idle rows are
    skipped), and with `span` (static) only the first `span` slots are read, which must cover every
    pos_B: decoding reads the whole cache each step, so this is its cost.
    """
    x_BD = transformer.embed(params, tok_B[:, None], pos_B[:, None], cfg)[:, 0]
    B = tok_B.shape[0]

    def layer(x_BD, xs):
        p, k_BSKH, v_BSKH = xs
        if span is not None or B != k_BSKH.shape[0]:  # per layer: no copy of the whole cache
            k_BSKH, v_BSKH = k_BSKH[:B, :span], v_BSKH[:B, :span]
        h_BD = transformer.norm(p["attn_norm"], x_BD, cfg)
        a_BD, k_BKH, v_BKH = _decode_attention(p, h_BD, pos_B, k_BSKH, v_BSKH, cfg)
        x_BD = x_BD + a_BD
        x_BD = x_BD + transformer.mlp(p, transformer.norm(p["mlp_norm"], x_BD, cfg), cfg)
        return x_BD, (k_BKH, v_BKH)

    x_BD, (k_LBKH, v_LBKH) = jax.lax.scan(
        layer, x_BD, (params["layers"], cache.k_LBSKH, cache.v_LBSKH)
    )
    b_B = jnp.arange(B)
    cache = transformer.KVCache(
        cache.k_LBSKH.at[:, b_B, pos_B].set(k_LBKH), cache.v_LBSKH.at[:, b_B, pos_B].set(v_LBKH)
    )
    logits_BV = transformer.unembed(params, x_BD[:, None], cfg)[:, 0].astype(jnp.float32)
    return logits_BV, cache


def prefill_last(params, cfg, tokens_BP, lens_B, cache_len: int):
    """A fresh cache of `cache_len` slots filled with the right-padded prompts, and the logits
    at each prompt's last token: ([B, V], cache). `params` already in compute precision."""
    B, P = tokens_BP.shape
    dtype = jnp.dtype(precision.compute_dtype(cfg))
    shape = (cfg.n_layers, B, cache_len, cfg.kv_heads, cfg.head_dim)
    cache = transformer.KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    pos_BP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
    kv_mask_BS = jnp.arange(cache_len)[None, :] < lens_B[:, None]  # padding is never a key
    logits_BPV, cache = forward_cached(params, cfg, tokens_BP, pos_BP, cache, kv_mask_BS)
    last_BV = jnp.take_along_axis(logits_BPV, (lens_B - 1)[:, None, None], axis=1)[:, 0]
    return last_BV, cache


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len", "max_new", "top_k", "greedy"))
def _prefill(params, tokens_BP, lens_B, key, traced, eos_id, pad_id, *, cfg, cache_len, max_new,
             top_k, greedy) -> DecodeState:  # fmt: skip
    """Fill a fresh cache with the right-padded prompts and draw each one's first new token."""
    params = operand_params(params, cfg)
    B = tokens_BP.shape[0]
    last_BV, cache = prefill_last(params, cfg, tokens_BP, lens_B, cache_len)
    tok_B = _draw(key, 0, last_BV, traced, top_k, greedy)
    out_BR = jnp.full((B, max_new), pad_id, jnp.int32).at[:, 0].set(tok_B)
    return DecodeState(cache, tok_B, lens_B, out_BR, tok_B == eos_id, jnp.int32(1))


@functools.partial(jax.jit, static_argnames=("cfg", "top_k", "greedy"), donate_argnames=("state",))
def _decode(
    params, state: DecodeState, t_stop, key, traced, eos_id, pad_id, *, cfg, top_k, greedy
) -> DecodeState:
    """Decode on device until t reaches t_stop (or the budget) or every sequence is done.

    eos_id < 0 means no EOS. `state` is donated so the cache is updated in place across
    chunks; within the loop XLA updates the carried cache in place too.
    """
    params = operand_params(params, cfg)
    t_stop = jnp.minimum(t_stop, state.out_BR.shape[1])

    def cond(s: DecodeState):
        return (s.t < t_stop) & ~jnp.all(s.done_B)

    def step(s: DecodeState) -> DecodeState:
        logits_BV, cache = decode_forward(params, cfg, s.tok_B, s.pos_B, s.cache)
        tok_B = _draw(key, s.t, logits_BV, traced, top_k, greedy)
        tok_B = jnp.where(s.done_B, pad_id, tok_B)  # finished rows keep computing, emit pad
        out_BR = jax.lax.dynamic_update_slice(s.out_BR, tok_B[:, None], (0, s.t))
        done_B = s.done_B | (tok_B == eos_id)
        return DecodeState(cache, tok_B, s.pos_B + 1, out_BR, done_B, s.t + 1)

    return jax.lax.while_loop(cond, step, state)


# ---------------------------------------------------------------- the public entry points


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def prepare_prompts(cfg: ModelConfig, prompts, max_new_tokens, eos_id, pad_id):
    """Check the request; right-pad the prompts. Returns tokens [B, P], lengths [B], S.

    Raises RequestError (a ValueError, one line) before any compute; learned position
    embeddings do not exist past max_seq_len, and RoPE models were never trained there."""
    if len(prompts) == 0:
        raise request.RequestError("prompts: need at least one prompt", "prompts")
    V = cfg.vocab_size
    for i, p in enumerate(prompts):
        request.check_prompt(p, V, f"prompts[{i}]")
    for name, v in (("eos_id", eos_id), ("pad_id", pad_id)):
        if v is not None and not (isinstance(v, numbers.Integral) and 0 <= v < V):
            raise request.RequestError(f"{name}={v!r}: must be a token id in [0, {V})", name)
    lens = [len(p) for p in prompts]
    P = max(lens)
    request.new_token_budget(P, cfg.max_seq_len, max_new_tokens, prompt="the longest prompt")
    # Rounding P up lets nearby prompt lengths share one compilation; right padding is inert.
    P_pad = min(_round_up(P, 16), cfg.max_seq_len - max_new_tokens)
    tokens_BP = np.full((len(prompts), P_pad), pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens_BP[i, : len(p)] = p
    return tokens_BP, np.asarray(lens, np.int32), P_pad + max_new_tokens


def _new_tokens(out_BR: np.ndarray, start: int, stop: int, finished: list[bool], eos_id):
    """Each row's tokens in [start, stop), up to and including its first EOS."""
    chunk = []
    for b, row in enumerate(out_BR[:, start:stop].tolist()):
        if finished[b]:
            row = []
        elif eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
            finished[b] = True
        chunk.append(row)
    return chunk


def stream_generate(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    key: jax.Array,
    max_new_tokens: int,
    sp: SamplingParams = DEFAULT_SAMPLING,
    *,
    eos_id: int | None = None,
    pad_id: int = 0,
    chunk_size: int = 16,
) -> Iterator[list[list[int]]]:
    """Yield new tokens as they are decoded: one list per prompt, per chunk.

    The first yield is each prompt's first token (straight after the prefill); then each
    jitted call decodes up to `chunk_size` more tokens in an on-device loop. Rows are empty
    once a sequence has ended. Concatenating the chunks gives exactly `generate`'s result for
    the same arguments. Example, printing as tokens arrive:

        for chunk in stream_generate(params, cfg, [ids], key, 200, eos_id=eos):
            print(tokenizer.decode(chunk[0]), end="", flush=True)
    """
    tokens_BP, lens_B, cache_len = prepare_prompts(cfg, prompts, max_new_tokens, eos_id, pad_id)
    traced, top_k, greedy = _sampling(sp)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise ValueError(f"chunk_size={chunk_size!r}: must be an integer >= 1")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    eos = -1 if eos_id is None else int(eos_id)  # -1 never matches a token
    static = dict(cfg=cfg, top_k=top_k, greedy=greedy)
    state = _prefill(params, tokens_BP, lens_B, key, traced, eos, pad_id, cache_len=cache_len,
                     max_new=max_new_tokens, **static)  # fmt: skip
    finished = [False] * len(prompts)
    emitted = 0
    while True:
        t, out_BR, done_B = jax.device_get((state.t, state.out_BR, state.done_B))
        t = int(t)
        yield _new_tokens(out_BR, emitted, t, finished, eos_id)
        emitted = t
        if t >= max_new_tokens or done_B.all():
            return
        state = _decode(params, state, t + chunk_size, key, traced, eos, pad_id, **static)


def generate(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    key: jax.Array,
    max_new_tokens: int,
    sp: SamplingParams = DEFAULT_SAMPLING,
    *,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> list[list[int]]:
    """New tokens per prompt (ending at EOS inclusive, or after max_new_tokens), with a KV cache.

    One prefill call, then one jitted on-device `while_loop` for the rest. Prompts may differ
    in length (right-padded with pad_id; see the module docstring). `GREEDY` is temperature 0.
    Raises ValueError (one line) on bad arguments, or when the longest prompt plus
    max_new_tokens exceeds cfg.max_seq_len.
    """
    out: list[list[int]] = [[] for _ in prompts]
    chunks = stream_generate(params, cfg, prompts, key, max_new_tokens, sp, eos_id=eos_id,
                             pad_id=pad_id, chunk_size=max_new_tokens)  # fmt: skip
    for chunk in chunks:
        for row, new in zip(out, chunk, strict=True):
            row.extend(new)
    return out


# ---------------------------------------------------------------- the bigram baseline


def generate_bigram(logp_VV, prompt: list[int], key, max_new_tokens: int,
                    sp: SamplingParams = DEFAULT_SAMPLING, *,
                    eos_id: int | None = None) -> list[int]:  # fmt: skip
    """New tokens after `prompt`, drawn with the same `sample_token` as the
    Transformer; stops after EOS."""
    if not prompt:
        raise ValueError("prompt: needs at least one token (use BOS)")
    _need_params(sp)
    table = jnp.asarray(logp_VV)

    def step(prev, k):
        tok = sample_token(k, table[prev][None], sp.temperature, sp.top_k, sp.top_p, sp.min_p)[0]
        return tok, tok

    keys = jax.random.split(key, max_new_tokens)
    _, out = jax.lax.scan(step, jnp.int32(prompt[-1]), keys)
    out = [int(x) for x in np.asarray(out)]
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id) + 1]
    return out


# ---------------------------------------------------------------- the no-cache reference


@functools.partial(jax.jit, static_argnames=("cfg", "length", "top_k", "greedy"))
def _nocache_step(params, buf_BS, lens_B, t, key, traced, *, cfg, length, top_k, greedy):
    """Full forward over the first `length` tokens; draw token t; write it at lens + t."""
    logits_BLV = transformer.apply(params, buf_BS[:, :length], cfg)
    last_BV = jnp.take_along_axis(logits_BLV, (lens_B + t - 1)[:, None, None], axis=1)[:, 0]
    tok_B = _draw(key, t, last_BV, traced, top_k, greedy)
    buf_BS = buf_BS.at[jnp.arange(buf_BS.shape[0]), lens_B + t].set(tok_B)
    return buf_BS, tok_B


def generate_nocache(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    key: jax.Array,
    max_new_tokens: int,
    sp: SamplingParams = DEFAULT_SAMPLING,
    *,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> list[list[int]]:
    """`generate` without a cache: re-runs `model.apply` on the whole sequence for every token.

    The slow reference for tests and the benchmark baseline: a Python loop, one jitted full
    forward per token. The forward covers the tokens so far rounded up to a multiple of 64
    (right padding is causally invisible) so only a few lengths compile. Same arguments,
    checks and per-token keys as `generate`, hence the same tokens up to float rounding.
    """
    tokens_BP, lens_B, cache_len = prepare_prompts(cfg, prompts, max_new_tokens, eos_id, pad_id)
    traced, top_k, greedy = _sampling(sp)
    B, P = tokens_BP.shape
    buf_BS = np.full((B, cache_len), pad_id, np.int32)
    buf_BS[:, :P] = tokens_BP
    buf_BS = jnp.asarray(buf_BS)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * B
    for t in range(max_new_tokens):
        length = min(cache_len, _round_up(int(lens_B.max()) + t, 64))
        buf_BS, tok_B = _nocache_step(params, buf_BS, lens_B, t, key, traced, cfg=cfg,
                                      length=length, top_k=top_k, greedy=greedy)  # fmt: skip
        for b, tok in enumerate(np.asarray(tok_B).tolist()):
            if not done[b]:
                out[b].append(tok)
                done[b] = tok == eos_id
        if all(done):
            break
    return out
