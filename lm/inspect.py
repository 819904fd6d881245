"""Look inside one prediction, step by step, the way explainers of LLMs teach it.

`explain(cfg, params, tok, prompt)` prints, and returns as a dict:
  1. the prompt as tokens: pieces and ids (BOS first);
  2. the embedding lookup: one row of the [V, D] embedding matrix per token (plus a row of the
     position matrix, for learned positions);
  3. the residual stream after each layer ([T, D], one norm per position) and each layer's
     attention pattern, per head, as heatmaps;
  4. the logits of the last position and the ten likeliest next tokens (a table and a chart);
  5. the greedy choice against a sampled one, and a short sampled continuation.

The forward pass here is `model.block` in a Python loop over `model.layer_params`, so each
layer's output and attention weights can be kept; `recorded_forward` gives the same logits
as `model.apply` (tested). `embedding_similarity` compares words by their token embeddings.
Figures are PNGs drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import model, sampling
from lm.config import Config, ModelConfig

TOP = 10  # next tokens shown
SHOW = 8  # vector entries shown


def recorded_forward(params, cfg: ModelConfig, tokens: list[int]) -> dict[str, Any]:
    """One sequence through the model, layer by layer, keeping what each layer produced.

    Returns numpy arrays: "embedded" [T, D] (the layer input), "layers" [L, T, D] (the residual
    stream after each layer), "attention" [L, N, T, T] (weights of query t on key s per head),
    "logits" [T, V] (float32).
    """
    out = _recorded(params, jnp.asarray([tokens], jnp.int32), cfg=cfg)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


@functools.partial(jax.jit, static_argnames="cfg")  # one compile instead of ~100 op by op
def _recorded(params, tokens_BT, *, cfg: ModelConfig):
    pos_BT = jnp.arange(tokens_BT.shape[1])[None]
    x_BTD = model.embed(params, tokens_BT, pos_BT, cfg)
    embedded, layers, attention = x_BTD[0], [], []
    dtype = x_BTD.dtype  # model.apply casts the layer weights to the compute dtype; so must we
    for i in range(cfg.n_layers):
        p = jax.tree.map(lambda a: a.astype(dtype), model.layer_params(params, i))
        x_BTD, _, w_BKGTS = model.block(p, x_BTD, pos_BT, cfg)
        layers.append(x_BTD[0])
        K, G, T, S = w_BKGTS.shape[1:]
        # query head n is kv head n // G, member n % G (model._attention's reshape)
        attention.append(w_BKGTS[0].reshape(K * G, T, S))
    logits_BTV = model.unembed(params, x_BTD, cfg).astype(jnp.float32)
    return {
        "embedded": embedded,
        "layers": jnp.stack(layers),
        "attention": jnp.stack(attention),
        "logits": logits_BTV[0],
    }


def piece(tok, i: int) -> str:
    """A readable piece; ids past the tokenizer's vocabulary (padding rows) get a placeholder."""
    return tok.pieces([i])[0] if i < tok.vocab_size else f"<unused {i}>"


def _vec(v) -> str:
    v = np.asarray(v)
    more = f", ... ({len(v)} numbers)]" if len(v) > SHOW else "]"
    return "[" + ", ".join(f"{x:+.3f}" for x in v[:SHOW]) + more


def _label(p: str) -> str:
    return p.replace("$", r"\$")  # matplotlib would read $...$ as math


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # a piece may lack a glyph in the default font
        warnings.simplefilter("ignore")
        fig.savefig(path, dpi=100)
    return str(path)


def plot_attention(w_NTS: np.ndarray, pieces: list[str], layer: int, path: Path) -> str:
    """One heatmap per head; a long prompt labels every k-th token so labels stay legible."""
    N, T, _ = w_NTS.shape
    cols, every = min(N, 4), -(-T // 40)
    rows, side = -(-N // cols), 1.2 + 0.22 * min(T, 40)
    fig = _figure(cols * side, rows * side + 0.4)
    ticks = list(range(0, T, every))
    labels = [_label(pieces[t]) for t in ticks]
    for n, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        if n >= N:
            ax.axis("off")
            continue
        ax.imshow(w_NTS[n], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {n}", fontsize=9)
        ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
    fig.suptitle(f"layer {layer} attention (row: query position, column: key position)")
    return _save(fig, path)


def plot_top(rows: list[dict], path: Path) -> str:
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    ax.bar(range(len(rows)), [r["prob"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), [_label(r["piece"]) for r in rows], rotation=45)
    ax.set_ylabel("probability")
    ax.set_title(f"top {len(rows)} next tokens")
    return _save(fig, path)


def explain(
    cfg: Config,
    params,
    tok,
    prompt: str,
    temperature: float = 0.8,
    seed: int = 0,
    out_dir: str | Path | None = None,
    continuation_tokens: int = 40,
    print_fn=print,
) -> dict[str, Any]:
    """Walk one next-token prediction for `prompt`, printing each step; returns the numbers.
    PNGs go to out_dir (None: no figures). Raises ValueError if the prompt does not fit."""
    m = cfg.model
    tokens = [tok.bos_id, *tok.encode(prompt)]
    T = len(tokens)
    if T > m.max_seq_len:
        raise ValueError(
            f"prompt is {T} tokens (with BOS), more than the model's context (max_seq_len) "
            f"of {m.max_seq_len}"
        )
    pieces = [piece(tok, i) for i in tokens]
    out = Path(out_dir) if out_dir is not None else None
    rec = recorded_forward(params, m, tokens)
    pngs: list[str] = []
    say = print_fn

    say(f"== 1. tokens: {prompt!r} is {T} tokens (BOS first) ==")
    say(f"{'pos':>5} {'id':>6}  piece")
    for t, (i, p) in enumerate(zip(tokens, pieces, strict=True)):
        say(f"{t:>5} {i:>6}  {p}")

    embed = np.asarray(params["embed"], np.float32)
    say("\n== 2. embedding lookup ==")
    say(f"embed is [V={embed.shape[0]}, D={embed.shape[1]}]: one row of numbers per token id")
    say(f"token 0 ({pieces[0]}, id {tokens[0]}) -> embed[{tokens[0]}] = {_vec(embed[tokens[0]])}")
    if m.positions == "learned":
        pos = np.asarray(params["pos_embed"], np.float32)
        say(f"pos_embed is [{pos.shape[0]}, {pos.shape[1]}]: one row per position")
        say(f"position 0 -> pos_embed[0] = {_vec(pos[0])}")
        say(f"x[0] = token row + position row = {_vec(rec['embedded'][0])}")
    else:
        say("positions: rotary (RoPE); nothing is added here, queries and keys are rotated by")
        say("their position inside every attention layer")
    say(f"x is [T={T}, D={m.d_model}], the residual stream that every layer adds to")

    say("\n== 3. through the layers ==")
    say(f"each layer: x += attention(norm(x)); x += mlp(norm(x)); {m.n_heads} heads per layer")
    norms = np.linalg.norm(rec["layers"], axis=-1)  # [L, T]
    for layer in range(m.n_layers):
        w_NTS = rec["attention"][layer]
        say(f"layer {layer}: out {list(rec['layers'][layer].shape)}, |x| per position: "
            + " ".join(f"{v:.2f}" for v in norms[layer]))  # fmt: skip
        most = [f"h{n}->{pieces[int(np.argmax(w_NTS[n, -1]))]!r}" for n in range(len(w_NTS))]
        say(f"  the last position attends most to: {', '.join(most)}")
        if out is not None:
            pngs.append(plot_attention(w_NTS, pieces, layer, out / f"attention_layer{layer}.png"))
    if out is not None:
        say(f"attention heatmaps: {out}/attention_layer*.png")

    logits = rec["logits"]
    last = logits[-1].astype(np.float64)
    probs = np.exp(last - last.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:TOP]
    top = [
        {
            "id": int(i),
            "piece": piece(tok, int(i)),
            "prob": float(probs[i]),
            "logit": float(last[i]),
        }
        for i in order
    ]
    say("\n== 4. logits ==")
    unembed = "embed.T (tied)" if m.tied_embeddings else "unembed"
    say(f"final norm, then x @ {unembed}: logits [T={T}, V={logits.shape[1]}]")
    say(f"the last row, [V={logits.shape[1]}], scores every possible next token; softmax:")
    say(f"{'rank':>5} {'id':>6} {'prob':>7} {'logit':>8}  piece")
    for r, row in enumerate(top, 1):
        say(f"{r:>5} {row['id']:>6} {row['prob']:>7.4f} {row['logit']:>8.3f}  {row['piece']}")
    say(f"the top {TOP} hold {sum(r['prob'] for r in top):.3f} of the probability")
    if out is not None:
        pngs.append(plot_top(top, out / "top_tokens.png"))
        say(f"chart: {pngs[-1]}")

    key = jax.random.PRNGKey(seed)
    greedy = int(np.argmax(last))
    drawn = int(sampling.sample_token(key, jnp.asarray(logits[-1:]), temperature)[0])
    say("\n== 5. choosing the next token ==")
    say(f"greedy (temperature 0): {piece(tok, greedy)!r} (id {greedy}, p={probs[greedy]:.4f})")
    say(
        f"sampled at temperature {temperature} (seed {seed}): {piece(tok, drawn)!r} "
        f"(id {drawn}, p={probs[drawn]:.4f})"
    )
    n = min(continuation_tokens, m.max_seq_len - T)
    new: list[int] = []
    if n >= 1:
        new = sampling.generate(
            params, m, [tokens], key, n, temperature, eos_id=tok.eos_id, pad_id=tok.pad_id
        )[0]
        say(f"continuing for {len(new)} tokens at temperature {temperature}:")
        say(repr(prompt + tok.decode([i for i in new if i < tok.vocab_size])))
    return {
        "tokens": tokens,
        "pieces": pieces,
        "embed_shape": list(embed.shape),
        "first_vector": embed[tokens[0]].tolist(),
        "layer_shapes": [list(x.shape) for x in rec["layers"]],
        "layer_norms": norms.tolist(),
        "attention_shape": list(rec["attention"].shape),
        "logits_shape": list(logits.shape),
        "top": top,
        "greedy": greedy,
        "sampled": drawn,
        "continuation": new,
        "pngs": pngs,
    }


def embedding_similarity(
    params, tok, words: list[str], png: str | Path | None = None
) -> dict[str, Any]:
    """Cosine similarity of words by their input embeddings (the mean over each word's
    tokens), and their 2-D PCA coordinates (numpy SVD); optionally a scatter plot."""
    if not words:
        raise ValueError("give at least one word")
    embed = np.asarray(params["embed"], np.float64)
    vecs = []
    for w in words:
        ids = tok.encode(w)
        if not ids:
            raise ValueError(f"word {w!r}: encodes to no tokens")
        vecs.append(embed[ids].mean(0))
    X_WD = np.stack(vecs)
    unit_WD = X_WD / np.maximum(np.linalg.norm(X_WD, axis=-1, keepdims=True), 1e-30)
    cos_WW = unit_WD @ unit_WD.T
    centered_WD = X_WD - X_WD.mean(0)
    _, s, vt = np.linalg.svd(centered_WD, full_matrices=False)
    xy_W2 = np.zeros((len(words), 2))
    k = min(2, vt.shape[0])
    xy_W2[:, :k] = centered_WD @ vt[:k].T
    var = s**2
    explained = (var[:2] / var.sum()).tolist() if var.sum() > 0 else [0.0, 0.0]
    result = {
        "words": list(words),
        "cosine": cos_WW.tolist(),
        "pca": xy_W2.tolist(),
        "explained_variance": explained,
    }
    if png is not None:
        fig = _figure(5, 4.5)
        ax = fig.subplots()
        ax.scatter(xy_W2[:, 0], xy_W2[:, 1])
        for (x, y), w in zip(xy_W2, words, strict=True):
            ax.annotate(_label(w), (x, y), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title("word embeddings, first two principal components", fontsize=10)
        result["png"] = _save(fig, Path(png))
    return result


def format_similarity(result: dict[str, Any]) -> str:
    words = [w if len(w) <= 10 else w[:9] + "…" for w in result["words"]]
    width = max(8, *(len(repr(w)) for w in words)) + 1
    lines = [" " * width + "".join(f"{w!r:>{width}}" for w in words)]
    for w, row in zip(words, result["cosine"], strict=True):
        lines.append(f"{w!r:>{width}}" + "".join(f"{c:>{width}.3f}" for c in row))
    return "\n".join(lines)
