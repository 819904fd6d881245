"""The numbers behind the inspector page (`lm serve`'s `/`): JSON-ready, no web framework.

`inspect` is `lm inspect` for one position, interactively: the tokens (ids, the tokenizer's
pieces, and what each reads as), the next-token distribution under the page's temperature,
top-k, top-p and min-p (the ten likeliest tokens, and which filter removes each), a token
drawn from it, and every layer's attention per head. `stages` is `lm inspect --stages`: the
same printed walk-through, plus each stage's [T, width] matrix per layer for heatmaps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm.data import pieces as pieces_lib
from lm.data.sources import source_for
from lm.inference import inspection as inspect_lib
from lm.inference import sampling
from lm.inference.request import SamplingParams, check_fits, check_prompt

TOP = 10
MAX_ATTENTION = 96  # positions of attention sent (the last ones); T*T*L*N numbers otherwise
MAX_STAGE_NUMBERS = 400_000  # stage matrices above this many numbers are left out


def info(served) -> dict[str, Any]:
    m, tok = served.m, served.tok
    source = source_for(served.cfg.data)
    return {
        "model": served.name,
        "kind": served.cfg.kind,
        "preset": served.cfg.preset,
        "n_layers": m.n_layers,
        "n_heads": m.n_heads,
        "d_model": m.d_model,
        "vocab_size": m.vocab_size,
        "max_seq_len": m.max_seq_len,
        "positions": m.positions,
        "tokenizer": type(tok).__name__,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "task": source.source if source.kind == "task" else None,
    }


def _ids(served, body) -> list[int]:
    """The body's ids, or its prompt's (BOS first); RequestError (a ValueError) when they are
    not token ids or do not fit the context."""
    tok = served.tok
    if body.ids is not None:
        ids, where = list(body.ids), "ids"
    else:
        try:
            ids, where = [tok.bos_id, *tok.encode(body.prompt or "")], "prompt"
        except ValueError as e:
            raise ValueError(f"prompt: {e}") from None
    check_prompt(ids, served.m.vocab_size, where)
    check_fits(len(ids), served.m.max_seq_len, prompt=where, bos=where == "prompt")
    return ids


def _probs(z) -> np.ndarray:
    z = np.asarray(z, np.float64)
    q = np.where(np.isfinite(z), np.exp(z - z[np.isfinite(z)].max()), 0.0)
    return q / q.sum()


def inspect(served, body) -> dict[str, Any]:
    tok, m = served.tok, served.m
    ids = _ids(served, body)
    sp = SamplingParams(body.temperature, body.top_k, body.top_p, body.min_p)  # checks them
    with served.inspect_lock:  # one forward pass at a time; the engine has the other core
        rec = inspect_lib.recorded_forward(served.params, m, ids, bucket=16)
    last = rec["logits"][-1]
    T = len(ids)
    temp, top_k = sp.temperature, sp.top_k
    top_p = None if sp.top_p == 1 else sp.top_p  # the page's "off" values
    min_p = None if sp.min_p == 0 else sp.min_p
    # each filter in turn, as sampling.process_logits applies them, to say who removed what
    z = sampling.apply_temperature(jnp.asarray(last[None]), temp if temp > 0 else 1.0)
    stages = [("temperature", z)]
    if top_k is not None:
        stages.append(("top_k", z := sampling.filter_top_k(z, top_k)))
    if top_p is not None:
        stages.append(("top_p", z := sampling.filter_top_p(z, top_p)))
    if min_p is not None:
        stages.append(("min_p", z := sampling.filter_min_p(z, min_p)))
    zs = [(name, np.asarray(a[0])) for name, a in stages]
    scaled = _probs(zs[0][1])
    final = _probs(zs[-1][1])
    kept = np.isfinite(zs[-1][1])
    removed_by = np.full(last.shape, "", object)
    for (_, before), (name, after) in zip(zs, zs[1:], strict=False):
        removed_by[np.isfinite(before) & ~np.isfinite(after)] = name
    model_p = _probs(last)
    key = jax.random.fold_in(jax.random.PRNGKey(body.seed), T)
    drawn = int(sampling.sample_token(key, jnp.asarray(last[None]), temp, top_k, top_p,
                                      min_p)[0])  # fmt: skip
    greedy = int(np.argmax(last))
    order = np.argsort(-scaled, kind="stable")[:TOP]
    label = lambda i: pieces_lib.next_label(tok, ids, int(i))
    piece = lambda i: inspect_lib.piece(tok, int(i))
    top = [
        {
            "id": int(i),
            "label": label(i),
            "piece": piece(i),
            "model_p": float(model_p[i]),
            "p": float(scaled[i]),  # at the temperature, before the filters
            "final_p": float(final[i]) if temp > 0 else float(i == greedy),
            "removed_by": removed_by[i] or None,
        }
        for i in order
    ]
    att = rec["attention"]
    off = max(0, T - MAX_ATTENTION)
    att = att[:, :, off:, off:]
    labels = pieces_lib.labels(tok, ids)
    return {
        "ids": ids,
        "labels": labels,
        "pieces": [piece(i) for i in ids],
        "text": tok.decode([i for i in ids if i < tok.vocab_size]),
        "top": top,
        "kept": {name: int(np.isfinite(a).sum()) for name, a in zs},
        "vocab_size": int(last.shape[0]),
        "greedy": {"id": greedy, "label": label(greedy), "model_p": float(model_p[greedy])},
        "sampled": {
            "id": drawn,
            "label": label(drawn),
            "p": float(final[drawn]) if temp > 0 else 1.0,
            "model_p": float(model_p[drawn]),
            "kept": bool(kept[drawn]),
        },
        "is_eos": drawn == tok.eos_id,
        "attention": {
            "offset": off,
            "labels": labels[off:],
            "weights": np.round(att, 4).tolist(),  # [L][N][T][T]
        },
        "room": m.max_seq_len - T,
    }


def stages(served, body) -> dict[str, Any]:
    """`lm inspect --stages` for the page: its printed lines and the stage matrices."""
    tok, m = served.tok, served.m
    ids = _ids(served, body)
    lines: list[str] = []
    with served.inspect_lock:
        staged = inspect_lib.explain_stages(served.cfg, served.params, tok, ids, body.max_new,
                                            None, lines.append)  # fmt: skip
        rec = inspect_lib.recorded_stages(served.params, m, staged["sequence"])
    T = len(staged["sequence"])
    names = [n for n in inspect_lib.STAGES if n != "attention"]
    mats: dict[str, Any] = {}
    total = sum(rec[n][0].reshape(T, -1).shape[1] * T * m.n_layers for n in names)
    if total <= MAX_STAGE_NUMBERS:
        mats = {n: np.round(rec[n].reshape(m.n_layers, T, -1), 4).tolist() for n in names}
        mats["attention"] = np.round(rec["attention"], 4).tolist()
        mats["embedded"] = np.round(rec["embedded"], 4)[None].tolist()
    return {
        "lines": lines,
        "sequence": staged["sequence"],
        "labels": staged["pieces"],
        "prompt_len": len(ids),
        "output": staged["output"],
        "matrices": mats,
        "left_out": None if mats else f"{total:,} numbers: too many to draw here",
    }
