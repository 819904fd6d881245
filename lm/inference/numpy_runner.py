"""Run an exported model file with numpy alone: read it, run the forward pass, sample text.

    python -m lm.inference.numpy_runner model.lm "def fib(n):" --max-new-tokens 100

Needs numpy, plus the `sentencepiece` package when the file holds a sentencepiece tokenizer
(byte-level models need nothing else). Never imports jax: this is the whole model spelled out again
beside `lm.model.transformer`, and the tests check that the two agree token for token. Computes in
float32 (a bfloat16 model's outputs can differ slightly from its JAX run).

The file (`lm export`) is safetensors: an 8-byte little-endian header length n, n bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the raw
little-endian tensor bytes, offsets counted from the end of the header (read by
`lm.util.tensorfile.read_header`, which checks every size and offset). Weights are named by their
path in the params dict ("layers.wq" is [L, D, N, H]; shape letters as in lm.model.transformer). Our
metadata: format, format_version, kind (transformer | bigram), config (the run's resolved config as
JSON), tokenizer (byte | sentencepiece; its proto is the uint8 "tokenizer.proto") and, from
format_version 2, sha256: the SHA-256 of the other metadata and every tensor's bytes (see `digest`),
so a flipped bit fails to load instead of running as garbage. Version 1 files (no digest) are still
read. Version 3 is version 2 for a model with `model.parametrization: mup`, whose forward pass
has muP's output and attention multipliers (lm.model.parametrization; the config carries the
parametrization and mup_base_width). Nothing in a file is ever executed: every size and offset is
checked against the file first.

A request's sampling parameters and token budget are `lm.inference.request`'s, as for JAX.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from lm.data.tokenizer import ByteTokenizer, SentencePieceTokenizer
from lm.inference.request import GREEDY, RequestError, SamplingParams, new_token_budget
from lm.model import parametrization as mup
from lm.model import rope
from lm.util import tensorfile

FORMAT, VERSION = "lm-model", "2"
# A muP model's file is version 3, otherwise version 2's: a reader from before muP refuses it
# rather than running it without muP's multipliers.
MUP_VERSION = "3"
READABLE = ("1", "2", "3")  # 1: before the digest
DTYPES = {"F32": "<f4", "F16": "<f2", "U8": "u1"}


class ModelFileError(ValueError):
    """Not a readable lm model file (truncated, corrupted, foreign); the message is one line."""


def read_model_file(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata with `config` parsed, {name: array}); checks shapes against the config."""
    path = Path(path)
    bad = lambda why: ModelFileError(f"{path}: not a valid lm model file ({why})")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = tensorfile.read_header(io.BytesIO(data), len(data), DTYPES)
    except tensorfile.SafetensorsError as e:
        raise bad(str(e)) from None
    meta = header.metadata
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad("no lm metadata; write one with `lm export`")
    if meta.get("format_version") not in READABLE:
        raise bad(
            f"format_version {meta.get('format_version')!r}, this code reads "
            f"{' and '.join(READABLE)}"
        )
    body, tensors = memoryview(data)[header.data_start :], {}
    for name, t in header.tensors.items():
        dtype = np.dtype(DTYPES[t.dtype])
        count = math.prod(t.shape)
        tensors[name] = np.frombuffer(body, dtype, count, t.begin).reshape(t.shape)
    try:
        config_text = meta["config"]
        meta = {**meta, "config": json.loads(config_text)}
        expected = param_shapes(meta["kind"], meta["config"]["model"])
    except (ValueError, TypeError, KeyError, ZeroDivisionError):
        raise bad("config metadata missing or malformed") from None
    got = {k: tuple(v.shape) for k, v in tensors.items() if k != "tokenizer.proto"}
    for k in sorted(expected.keys() | got.keys()):
        if expected.get(k) != got.get(k):
            raise bad(f"tensor {k}: shape {got.get(k)} where the config needs {expected.get(k)}")
    if meta["format_version"] != "1":
        raw_meta = {k: v for k, v in meta.items() if k != "config"} | {"config": config_text}
        if meta.get("sha256") != digest(raw_meta, tensors):
            raise ModelFileError(
                f"{path}: corrupted: its weights or metadata do not match the SHA-256 digest "
                "in its header; export it again"
            )
    return meta, tensors


def digest(meta: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 of the metadata (all but "sha256" itself) and every tensor's name and bytes, in
    name order: what a model file's "sha256" holds. Independent of the byte layout."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"},
                                  sort_keys=True).encode())  # fmt: skip
    for name in sorted(tensors):
        h.update(name.encode("utf-8") + b"\0")
        h.update(np.ascontiguousarray(tensors[name]).data)
    return h.hexdigest()


def param_shapes(kind: str, m: dict) -> dict[str, tuple[int, ...]]:
    """Every weight's shape, from the model config (transformer.param_specs's rules)."""
    sizes = [m[k] for k in ("n_layers", "d_model", "n_heads", "vocab_size", "max_seq_len")]
    if not all(type(x) is int and x > 0 for x in sizes):
        raise ValueError("model sizes")
    (L, D, N, V, _), K = sizes, m["n_kv_heads"] or m["n_heads"]
    if kind == "bigram":
        return {"bigram": (V, V)}
    choices = {"norm": ("layernorm", "rmsnorm"), "positions": ("learned", "rope")}
    choices |= {"mlp": ("gelu", "swiglu")}
    if kind != "transformer" or any(m[k] not in v for k, v in choices.items()) or N % K:
        raise ValueError(kind)
    # The numbers the forward pass uses, as lm.config.validate bounds them.
    nums = {k: m[k] for k in ("norm_eps", "rope_theta")}
    scaling = m.get("rope_scaling", "none")
    if scaling not in ("none", "linear", "llama3"):
        raise ValueError("rope_scaling")
    if scaling != "none":
        for k in ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
            nums[k] = m[k]
        nums["span"] = (m["rope_high_freq_factor"] - m["rope_low_freq_factor"]) or 1
        nums["original"] = m["rope_original_max_seq_len"]
    if m.get("parametrization", "sp") not in ("sp", "mup"):  # absent before muP: sp
        raise ValueError("parametrization")
    if mup.is_mup(m):
        nums["mup_base_width"] = m["mup_base_width"]
    if not all(type(v) in (int, float) and 0 < v < math.inf for v in nums.values()):
        raise ValueError(", ".join(nums))
    H = D // N
    F = m["d_ff"] or (-(-(8 * D // 3) // 64) * 64 if m["mlp"] == "swiglu" else 4 * D)
    s = {"embed": (V, D), "layers.wq": (L, D, N, H), "layers.wk": (L, D, K, H)}
    s |= {"layers.wv": (L, D, K, H), "layers.wo": (L, N, H, D), "layers.w_down": (L, F, D)}
    s |= {"layers.w_up": (L, D, F)} | ({"layers.w_gate": (L, D, F)} if m["mlp"] == "swiglu" else {})
    for name in ("layers.attn_norm", "layers.mlp_norm", "final_norm"):
        s[f"{name}.scale"] = (D,) if name == "final_norm" else (L, D)
        if m["norm"] == "layernorm":
            s[f"{name}.bias"] = s[f"{name}.scale"]
    if m["bias"]:
        s |= {"layers.bq": (L, N, H), "layers.bk": (L, K, H), "layers.bv": (L, K, H)}
        s |= {"layers.bo": (L, D), "layers.b_up": (L, F), "layers.b_down": (L, D)}
    if m["positions"] == "learned":
        s["pos_embed"] = (m["max_seq_len"], D)
    if not m["tied_embeddings"]:
        s["unembed"] = (D, V)
    return s


def make_tokenizer(meta: dict, tensors: dict[str, np.ndarray]):
    """The file's tokenizer (lm.data.tokenizer's own classes, which import no jax)."""
    if meta.get("tokenizer") == "byte":
        tok = ByteTokenizer()
    elif meta.get("tokenizer") != "sentencepiece" or "tokenizer.proto" not in tensors:
        raise ModelFileError(f"tokenizer {meta.get('tokenizer')!r}: expected byte or sentencepiece")
    else:
        try:
            tok = SentencePieceTokenizer(tensors["tokenizer.proto"].tobytes())
        except ImportError:
            raise ModelFileError(
                "this model's tokenizer needs: pip install sentencepiece"
            ) from None
        except ValueError as e:
            raise ModelFileError(f"tokenizer.proto: {e}") from None
    V = meta["config"]["model"]["vocab_size"]
    if tok.vocab_size > V:  # ids past the embedding would index out of it
        raise ModelFileError(
            f"tokenizer has {tok.vocab_size} ids but the model's config.model.vocab_size is {V}"
        )
    return tok


# ---------------------------------------------------------------- the forward pass


def norm(x_TD, w: dict, name: str, m: dict):
    if m["norm"] == "layernorm":
        x_TD = x_TD - x_TD.mean(-1, keepdims=True)
    y_TD = x_TD / np.sqrt((x_TD * x_TD).mean(-1, keepdims=True) + m["norm_eps"])
    y_TD = y_TD * w[f"{name}.scale"]
    return y_TD + w[f"{name}.bias"] if f"{name}.bias" in w else y_TD


def attention(p: dict, x_TD, pos_T, k_SKH, v_SKH, m: dict):
    """Causal self-attention for the new positions pos_T; writes their keys into the cache."""
    proj = lambda x_TD, w_DnH: np.tensordot(x_TD, w_DnH, 1)  # [T, D] x [D, n, H] -> [T, n, H]
    q_TNH, k_TKH, v_TKH = proj(x_TD, p["wq"]), proj(x_TD, p["wk"]), proj(x_TD, p["wv"])
    if "bq" in p:
        q_TNH, k_TKH, v_TKH = q_TNH + p["bq"], k_TKH + p["bk"], v_TKH + p["bv"]
    if m["positions"] == "rope":
        freq_h = rope.frequencies(q_TNH.shape[-1], m)
        q_TNH, k_TKH = rope.rotate(q_TNH, pos_T, freq_h), rope.rotate(k_TKH, pos_T, freq_h)
    S = pos_T[-1] + 1  # the cache holds every earlier position; attend to all of them
    k_SKH[pos_T], v_SKH[pos_T] = k_TKH, v_TKH
    (T, N, H), K = q_TNH.shape, k_SKH.shape[1]
    q_TKGH = q_TNH.reshape(T, K, N // K, H)  # G query heads share each key/value head
    scale = np.float32(mup.attention_scale(m, H))  # 1/sqrt(H); 1/H under muP
    s_KGTS = np.einsum("TKGH,SKH->KGTS", q_TKGH, k_SKH[:S]) * scale
    s_KGTS = np.where(np.arange(S) <= pos_T[:, None], s_KGTS, -np.inf)
    w_KGTS = np.exp(s_KGTS - s_KGTS.max(-1, keepdims=True))
    w_KGTS /= w_KGTS.sum(-1, keepdims=True)
    o_TNH = np.einsum("KGTS,SKH->TKGH", w_KGTS, v_SKH[:S]).reshape(T, N, H)
    out_TD = np.tensordot(o_TNH, p["wo"], 2)  # [T, N, H] x [N, H, D] -> [T, D]
    return out_TD + p["bo"] if "bo" in p else out_TD


def mlp(p: dict, x_TD, m: dict):
    up_TF = x_TD @ p["w_up"] + p["b_up"] if "b_up" in p else x_TD @ p["w_up"]
    if m["mlp"] == "swiglu":
        g_TF = x_TD @ p["w_gate"]
        h_TF = g_TF / (1 + np.exp(-g_TF)) * up_TF  # silu(gate) * up
    else:  # gelu, tanh approximation (u*u*u: float32 u**3 is a slow pow)
        c_TF = math.sqrt(2 / math.pi) * (up_TF + 0.044715 * up_TF * up_TF * up_TF)
        h_TF = 0.5 * up_TF * (1 + np.tanh(c_TF))
    out_TD = h_TF @ p["w_down"]
    return out_TD + p["b_down"] if "b_down" in p else out_TD


def transformer(w: dict, m: dict, S: int | None = None) -> Callable[[list[int]], np.ndarray]:
    """A stateful step: feed the next tokens, get the last one's logits [V]. Keeps a KV cache
    of S positions (default: the whole context, max_seq_len)."""
    w = {k: v.astype(np.float32) for k, v in w.items() if k != "tokenizer.proto"}
    L, S = m["n_layers"], S or m["max_seq_len"]
    layers = [{k[7:]: v[i] for k, v in w.items() if k.startswith("layers.")} for i in range(L)]
    K, H = w["layers.wk"].shape[-2:]
    k_LSKH, v_LSKH = np.zeros((2, L, S, K, H), np.float32)
    pos = 0

    def step(tokens: list[int]) -> np.ndarray:
        nonlocal pos
        pos_T = np.arange(pos, pos + len(tokens))
        pos += len(tokens)
        x_TD = w["embed"][tokens] + (w["pos_embed"][pos_T] if "pos_embed" in w else 0)
        for p, k_SKH, v_SKH in zip(layers, k_LSKH, v_LSKH, strict=True):
            x_TD = x_TD + attention(p, norm(x_TD, p, "attn_norm", m), pos_T, k_SKH, v_SKH, m)
            x_TD = x_TD + mlp(p, norm(x_TD, p, "mlp_norm", m), m)
        x_D = norm(x_TD[-1:], w, "final_norm", m)[0] * np.float32(mup.output_multiplier(m))
        return x_D @ w["unembed"] if "unembed" in w else w["embed"] @ x_D

    return step


def bigram(w: dict) -> Callable[[list[int]], np.ndarray]:
    return lambda tokens: w["bigram"][tokens[-1]].astype(np.float32)


# ---------------------------------------------------------------- sampling and streaming


def sample(logits_V, sp: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else softmax of `filtered` logits."""
    if sp.greedy:
        return int(np.argmax(logits_V))
    z_V = filtered(logits_V, sp)
    p_V = np.exp(z_V - z_V.max())
    return int(rng.choice(len(p_V), p=p_V / p_V.sum()))


def filtered(logits_V, sp: SamplingParams) -> np.ndarray:
    """logits / T (T > 0), then top-k (ties at the k-th kept), top-p (the smallest top set
    with mass >= p) and min-p (prob >= min_p * the top prob), in lm.inference.sampling's order
    and with its cut-off rules; removed tokens are -inf."""
    top_k, top_p, min_p = sp.top_k, sp.top_p, sp.min_p
    z_V = logits_V.astype(np.float64) / sp.temperature
    if top_k is not None:
        z_V = np.where(z_V >= np.sort(z_V)[-min(top_k, len(z_V))], z_V, -np.inf)
    if top_p is not None and top_p < 1:
        desc = np.sort(z_V)[::-1]
        q = np.exp(desc - desc[0])
        q /= q.sum()
        n_keep = max(int(((np.cumsum(q) - q) < top_p).sum()), 1)
        z_V = np.where(z_V >= desc[n_keep - 1], z_V, -np.inf)
    if min_p is not None and min_p > 0:  # min_p 0 keeps every token
        z_V = np.where(z_V >= z_V.max() + np.log(min_p), z_V, -np.inf)
    return z_V


def generate(step, prompt: list[int], max_new_tokens: int, sp: SamplingParams = GREEDY,
             seed: int = 0, eos_id: int | None = None) -> Iterator[int]:  # fmt: skip
    """New tokens one at a time (stopping after EOS), from a fresh `transformer`/`bigram` step."""
    rng, logits_V = np.random.default_rng(seed), step(prompt)
    for i in range(max_new_tokens):
        tok = sample(logits_V, sp, rng)
        yield tok
        if tok == eos_id or i == max_new_tokens - 1:
            return
        logits_V = step([tok])


def stream_text(decode: Callable[[list[int]], str], chunks: Iterable[list[int]]) -> Iterator[str]:
    """Text to print as chunks of tokens arrive. A character's UTF-8 bytes may arrive in
    different chunks, so this decodes all tokens so far and yields what is new, holding back a
    trailing U+FFFD (possibly a character still incomplete) until more tokens or the end."""
    ids, shown = [], ""
    for chunk in chunks:
        ids.extend(chunk)
        text = decode(ids).rstrip("\ufffd")
        if len(text) > len(shown):
            yield text[len(shown) :]
            shown = text
    if len(text := decode(ids)) > len(shown):
        yield text[len(shown) :]


def decoder(tok) -> Callable[[list[int]], str]:
    """tok.decode, skipping ids past the tokenizer (the model's spare rows, never trained)."""
    return lambda ids: tok.decode([i for i in ids if i < tok.vocab_size])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lm.inference.numpy_runner",
        description="Continue a prompt with a model file from `lm export`, using numpy only "
        "(and sentencepiece for sentencepiece tokenizers); text streams out as generated.",
    )
    ap.add_argument("model", help="model file (lm export --out)")
    ap.add_argument("prompt", nargs="?", default="", help="text to continue (default: none)")
    ap.add_argument("--max-new-tokens", type=int, help="default: as many as fit, up to 200")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    ap.add_argument("--top-k", type=int, help="sample from the k likeliest tokens only")
    ap.add_argument("--top-p", type=float, help="nucleus: the smallest top set with mass >= p")
    ap.add_argument("--min-p", type=float, help="keep tokens with prob >= min_p * the top prob")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = ap.parse_args(argv)
    try:
        sp = SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p)
        meta, w = read_model_file(args.model)
        tok, m = make_tokenizer(meta, w), meta["config"]["model"]
        prompt = [tok.bos_id, *tok.encode(args.prompt)]
        limit = None if meta["kind"] == "bigram" else m["max_seq_len"]
        n = new_token_budget(len(prompt), limit, args.max_new_tokens, bos=True)
    except RequestError as e:  # named as the flag it came from
        print(f"error: {e.for_flag()}", file=sys.stderr)
        return 2
    except ValueError as e:  # ModelFileError, or a prompt with lone surrogates
        print(f"error: {e}", file=sys.stderr)
        return 2
    step = bigram(w) if meta["kind"] == "bigram" else transformer(w, m, len(prompt) + n)
    new = generate(step, prompt, n, sp, args.seed, tok.eos_id)
    print(args.prompt, end="", flush=True)
    for text in stream_text(decoder(tok), ([t] for t in new)):
        print(text, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
