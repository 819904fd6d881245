"""Look inside one prediction, step by step, the way explainers of LLMs teach it.

`explain(cfg, params, tok, prompt)` prints, and returns as a dict:
  1. the prompt as tokens: pieces and ids (BOS first);
  2. the embedding lookup: one row of the [V, D] embedding matrix per token (plus a row of the
     position matrix, for learned positions);
  3. the residual stream after each layer ([T, D], one norm per position) and each layer's
     attention pattern, per head, as heatmaps;
  4. the logits of the last position and the ten likeliest next tokens (a table and a chart);
  5. the greedy choice against a sampled one (one random draw gives both the sampled token
     and the sampled continuation that starts with it; its p is the probability in the
     distribution it was drawn from), and both continuations with their ids.

Tokens are shown as the text they decode to (`lm.data.pieces.labels`): byte-level and byte
fallback pieces are grouped back into characters, `こ[E3]` being the first of the three bytes
of 'こ'. Figures use DejaVu Sans with a CJK fallback font (`lm.util.fonts`); a glyph that no font
has is matplotlib's warning, which the tests turn into an error.

The forward pass here is `model.block` in a Python loop over `model.layer_params`, which
records each layer's intermediates (`rec`); `recorded_forward` gives the same logits as
`model.apply` (tested). `embedding_similarity` compares words by their token embeddings.
Figures are PNGs drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm.config import Config, ModelConfig
from lm.data import pieces as pieces_lib
from lm.inference import sampling
from lm.inference.request import GREEDY, SamplingParams, check_fits
from lm.model import parametrization as mup
from lm.model import transformer
from lm.util import fonts

TOP = 10  # next tokens shown
SHOW = 8  # vector entries shown
INSPECT_SAMPLING = SamplingParams(temperature=0.8)  # `lm inspect`'s default sampled choice


def recorded_forward(
    params, cfg: ModelConfig, tokens: list[int], bucket: int = 1
) -> dict[str, Any]:
    """One sequence through the model, layer by layer, keeping what each layer produced.

    Returns numpy arrays: "embedded" [T, D] (the layer input), "layers" [L, T, D] (the residual
    stream after each layer), "attention" [L, N, T, T] (weights of query t on key s per head),
    "logits" [T, V] (float32). `bucket` > 1 runs the tokens padded to a multiple of it (at most
    max_seq_len), so that nearby lengths share one compilation; attention is causal, so the
    padding changes nothing before it, and it is cut off again.
    """
    T = len(tokens)
    padded = min(-(-T // bucket) * bucket, max(cfg.max_seq_len, T))
    ids = np.zeros((1, padded), np.int32)
    ids[0, :T] = tokens
    out = _recorded(params, jnp.asarray(ids), cfg=cfg)
    out = {k: np.asarray(v, np.float32) for k, v in out.items()}
    out["embedded"], out["logits"] = out["embedded"][:T], out["logits"][:T]
    out["layers"], out["attention"] = out["layers"][:, :T], out["attention"][:, :, :T, :T]
    return out


@functools.partial(jax.jit, static_argnames="cfg")  # one compile instead of ~100 op by op
def _recorded(params, tokens_BT, *, cfg: ModelConfig):
    out = _stages(params, tokens_BT, cfg=cfg)
    return {k: out[k] for k in ("embedded", "logits")} | {
        "layers": out["x_out"],
        "attention": out["attention"],
    }


STAGES = (  # [L, T, ...] arrays `recorded_stages` keeps per layer, in the order they happen
    "x_in",  # the residual stream entering the layer
    "attn_norm",  # layer norm (or RMSNorm) of it: what attention reads
    "q",  # queries [L, T, N, H] (after RoPE, for rope models)
    "k",  # keys [L, T, K, H]
    "v",  # values [L, T, K, H]
    "attention",  # weights [L, N, T, T]
    "heads",  # each head's weighted sum of values [L, T, N, H]
    "attn_out",  # the output projection of the heads, added to the stream [L, T, D]
    "x_mid",  # the stream after attention
    "mlp_norm",
    "mlp_hidden",  # after the nonlinearity [L, T, F]
    "mlp_out",  # the MLP's down projection, added to the stream
    "x_out",  # the stream leaving the layer
)


def recorded_stages(params, cfg: ModelConfig, tokens: list[int]) -> dict[str, Any]:
    """Every intermediate of one sequence's forward pass, layer by layer (see STAGES), plus
    "embedded" [T, D], "final_norm" [T, D] and "logits" [T, V].

    Recorded by `model.block` itself (its `rec` argument), so every stage shown is one the
    model computes; tests hold the logits to `model.apply`."""
    out = _stages(params, jnp.asarray([tokens], jnp.int32), cfg=cfg)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


@functools.partial(jax.jit, static_argnames="cfg")
def _stages(params, tokens_BT, *, cfg: ModelConfig):
    pos_BT = jnp.arange(tokens_BT.shape[1])[None]
    x_BTD = transformer.embed(params, tokens_BT, pos_BT, cfg)
    embedded = x_BTD[0]
    dtype = x_BTD.dtype  # model.apply casts the layer weights to the compute dtype; so must we
    layers: list[dict] = []
    for i in range(cfg.n_layers):
        p = jax.tree.map(lambda a: a.astype(dtype), transformer.layer_params(params, i))
        layers.append({})
        x_BTD, _ = transformer.block(p, x_BTD, pos_BT, cfg, rec=layers[-1])
    return {
        "embedded": embedded,
        **{k: jnp.stack([rec[k][0] for rec in layers]) for k in STAGES},
        "final_norm": transformer.norm(params["final_norm"], x_BTD, cfg)[0],
        "logits": transformer.unembed(params, x_BTD, cfg).astype(jnp.float32)[0],
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
    fig.savefig(path, dpi=100)
    return str(path)


def _with_fonts(fn):
    """Run a drawing function with the CJK fallback font (text reads the rc when created)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with fonts.context():
            return fn(*args, **kwargs)

    return wrapped


@_with_fonts
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


@_with_fonts
def plot_top(rows: list[dict], path: Path) -> str:
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    ax.bar(range(len(rows)), [r["prob"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), [_label(r.get("label", r["piece"])) for r in rows],
                  rotation=45)  # fmt: skip
    ax.set_ylabel("probability")
    ax.set_title(f"top {len(rows)} next tokens")
    return _save(fig, path)


@_with_fonts
def explain(
    cfg: Config,
    params,
    tok,
    prompt: str,
    sp: SamplingParams = INSPECT_SAMPLING,
    seed: int = 0,
    out_dir: str | Path | None = None,
    continuation_tokens: int = 40,
    print_fn=print,
    stages: bool = False,
) -> dict[str, Any]:
    """Walk one next-token prediction for `prompt`, printing each step; returns the numbers.
    PNGs go to out_dir (None: no figures). Raises ValueError if the prompt does not fit.
    The sampled token is drawn as `sp` says (temperature, then the top_k / top_p / min_p
    filters). `stages`: also section 6, every stage of every layer over the prompt and its
    greedy continuation (`explain_stages`)."""
    m = cfg.model
    tokens = [tok.bos_id, *tok.encode(prompt)]
    T = len(tokens)
    check_fits(T, m.max_seq_len, bos=True)
    pieces = [piece(tok, i) for i in tokens]
    labels = pieces_lib.labels(tok, tokens)  # what each token reads as (see lm.data.pieces)
    out = Path(out_dir) if out_dir is not None else None
    rec = recorded_forward(params, m, tokens)
    say = print_fn

    say(f"== 1. tokens: {prompt!r} is {T} tokens (BOS first) ==")
    say(f"{'pos':>5} {'id':>6}  {'text':<12} piece (the tokenizer's own spelling)")
    for t, (i, lab, p) in enumerate(zip(tokens, labels, pieces, strict=True)):
        say(f"{t:>5} {i:>6}  {lab:<12} {p}")
    embed = _say_embedding(say, params, m, rec, tokens, pieces)
    norms, pngs = _say_layers(say, m, rec, labels, out)
    top, probs, top_png = _say_logits(say, m, tok, tokens, rec["logits"], out)
    pngs += top_png

    say("\n== 5. choosing the next token ==")
    c = _choose(params, m, tok, tokens, rec["logits"][-1], probs, sp, seed, continuation_tokens)
    for line in c.pop("lines"):
        say(line)
    staged = None
    if stages:
        staged = explain_stages(cfg, params, tok, tokens, continuation_tokens, out, say)
        pngs += staged["pngs"]
    return {
        "stages": staged,
        "tokens": tokens,
        "pieces": pieces,
        "embed_shape": list(embed.shape),
        "first_vector": embed[tokens[0]].tolist(),
        "layer_shapes": [list(x.shape) for x in rec["layers"]],
        "layer_norms": norms.tolist(),
        "attention_shape": list(rec["attention"].shape),
        "logits_shape": list(rec["logits"].shape),
        "top": top,
        "labels": labels,
        **c,
        "pngs": pngs,
    }


def _say_embedding(say, params, m: ModelConfig, rec, tokens, pieces) -> np.ndarray:
    """Section 2: the embedding lookup. Returns the embedding matrix [V, D]."""
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
    say(f"x is [T={len(tokens)}, D={m.d_model}], the residual stream that every layer adds to")
    return embed


def _say_layers(say, m: ModelConfig, rec, labels, out: Path | None):
    """Section 3: each layer's output norms and where the last position attends; the
    attention heatmaps. Returns (|x| per layer and position [L, T], PNG paths)."""
    say("\n== 3. through the layers ==")
    say(f"each layer: x += attention(norm(x)); x += mlp(norm(x)); {m.n_heads} heads per layer")
    norms = np.linalg.norm(rec["layers"], axis=-1)  # [L, T]
    pngs = []
    for layer in range(m.n_layers):
        w_NTS = rec["attention"][layer]
        say(f"layer {layer}: out {list(rec['layers'][layer].shape)}, |x| per position: "
            + " ".join(f"{v:.2f}" for v in norms[layer]))  # fmt: skip
        most = [f"h{n}->{labels[int(np.argmax(w_NTS[n, -1]))]!r}" for n in range(len(w_NTS))]
        say(f"  the last position attends most to: {', '.join(most)}")
        if out is not None:
            pngs.append(plot_attention(w_NTS, labels, layer, out / f"attention_layer{layer}.png"))
    if out is not None:
        say(f"attention heatmaps: {out}/attention_layer*.png")
    return norms, pngs


def _say_logits(say, m: ModelConfig, tok, tokens, logits, out: Path | None):
    """Section 4: the last position's logits and the top next tokens (a table and a chart).
    Returns (the top rows, the softmax of the last logits [V], PNG paths)."""
    T = len(tokens)
    last = logits[-1].astype(np.float64)
    probs = np.exp(last - last.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:TOP]
    top = [
        {
            "id": int(i),
            "piece": piece(tok, int(i)),
            "label": pieces_lib.next_label(tok, tokens, int(i)),
            "prob": float(probs[i]),
            "logit": float(last[i]),
        }
        for i in order
    ]
    say("\n== 4. logits ==")
    unembed = "embed.T (tied)" if m.tied_embeddings else "unembed"
    mult = f" times muP's 1/m = {mup.output_multiplier(m):.4g}" if mup.is_mup(m) else ""
    say(f"final norm{mult}, then x @ {unembed}: logits [T={T}, V={logits.shape[1]}]")
    say(f"the last row, [V={logits.shape[1]}], scores every possible next token; softmax:")
    say(f"{'rank':>5} {'id':>6} {'prob':>7} {'logit':>8}  {'text':<12} piece")
    for r, row in enumerate(top, 1):
        say(f"{r:>5} {row['id']:>6} {row['prob']:>7.4f} {row['logit']:>8.3f}  "
            f"{row['label']:<12} {row['piece']}")  # fmt: skip
    say(f"the top {TOP} hold {sum(r['prob'] for r in top):.3f} of the probability")
    pngs = []
    if out is not None:
        pngs.append(plot_top(top, out / "top_tokens.png"))
        say(f"chart: {pngs[-1]}")
    return top, probs, pngs


def _choose(params, m: ModelConfig, tok, tokens, last_V, probs_V, sp: SamplingParams, seed,
            n_tokens) -> dict[str, Any]:  # fmt: skip
    """Section 5: greedy against sampled, from one random draw.

    The sampled continuation is `sampling.generate` with PRNGKey(seed), and the sampled
    token is its first token (generate draws token 0 with fold_in(key, 0); when the context
    has no room for a continuation the same draw is made directly). Its p is the probability
    in the distribution it was drawn from: softmax of the processed logits."""
    key = jax.random.PRNGKey(seed)
    values = (sp.temperature, sp.top_k, sp.top_p, sp.min_p)
    greedy = int(np.argmax(probs_V))
    n = min(n_tokens, m.max_seq_len - len(tokens))
    gen = lambda how: sampling.generate(params, m, [tokens], key, n, how, eos_id=tok.eos_id,
                                        pad_id=tok.pad_id)[0]  # fmt: skip
    sampled_cont = gen(sp) if n >= 1 else []
    greedy_cont = gen(GREEDY) if n >= 1 else []
    if sampled_cont:
        drawn = int(sampled_cont[0])
    else:
        logits_1V = jnp.asarray(last_V[None])
        drawn = int(sampling.sample_token(jax.random.fold_in(key, 0), logits_1V, *values)[0])
    if sp.greedy:
        drawn_p, how = 1.0, "greedy, so the choice is certain"
    else:
        z = np.asarray(sampling.process_logits(jnp.asarray(last_V[None]), *values))
        q = np.exp(z[0].astype(np.float64) - z[0].max())
        drawn_p = float(q[drawn] / q.sum())
        filters = [f"{k}={v}" for k, v in sp.filters().items()]
        how = f"temperature {sp.temperature}" + (", " + ", ".join(filters) if filters else "")
    lab = lambda i: pieces_lib.next_label(tok, tokens, i)
    text = lambda ids: tok.decode([i for i in ids if i < tok.vocab_size])
    lines = [
        f"greedy (temperature 0): {lab(greedy)!r} (id {greedy}, model p={probs_V[greedy]:.4f})",
        f"sampled (seed {seed}, {how}): {lab(drawn)!r} (id {drawn}, p={drawn_p:.4f} in the "
        f"distribution it was drawn from; model p={probs_V[drawn]:.4f})",
    ]
    if n >= 1:
        lines += [
            f"greedy continuation ({len(greedy_cont)} tokens): {text(greedy_cont)!r}",
            f"  ids: {' '.join(map(str, greedy_cont))}",
            f"sampled continuation ({len(sampled_cont)} tokens, from the same draw, so it "
            f"starts with {lab(drawn)!r}): {text(sampled_cont)!r}",
            f"  ids: {' '.join(map(str, sampled_cont))}",
        ]
    else:
        lines.append("no room left in the context for a continuation")
    return {
        "lines": lines,
        "greedy": greedy,
        "sampled": drawn,
        "sampled_p": drawn_p,
        "continuation": [int(i) for i in sampled_cont],
        "greedy_continuation": [int(i) for i in greedy_cont],
    }


def _rows(x_TD: np.ndarray, pieces: list[str], say, what: str) -> None:
    say(f"  {what} [T={x_TD.shape[0]}, {x_TD.shape[1]}]; per position: mean, std, first entries")
    for t, p in enumerate(pieces):
        v = x_TD[t]
        say(f"    {t:>3} {p:>6}  mean {v.mean():+.3f} std {v.std():.3f}  {_vec(v)}")


@_with_fonts
def plot_stages(rec: dict[str, np.ndarray], layer: int, pieces: list[str], path: Path) -> str:
    """One layer's stages as heatmaps, rows = positions: what each step writes."""
    names = ["x_in", "attn_norm", "q", "k", "v", "heads", "attn_out", "x_mid", "mlp_norm",
             "mlp_hidden", "mlp_out", "x_out"]  # fmt: skip
    T = len(pieces)
    fig = _figure(16, 1.2 + 0.25 * T * 2)
    axes = fig.subplots(2, 6).flat
    for ax, name in zip(axes, names, strict=True):
        a = rec[name][layer].reshape(T, -1)
        lim = float(np.abs(a).max()) or 1.0
        ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_title(f"{name} [{T}, {a.shape[1]}]", fontsize=8)
        ax.set_yticks(range(T), [_label(p) for p in pieces], fontsize=6)
        ax.set_xticks([])
    fig.suptitle(
        f"layer {layer}: each stage, one row per position (q/k/v/heads: heads side by side)"
    )
    return _save(fig, path)


@_with_fonts
def plot_output_probs(probs_TV: np.ndarray, rows: list[str], cols: list[str], path: Path) -> str:
    fig = _figure(1.5 + 0.6 * len(cols), 1.2 + 0.35 * len(rows))
    ax = fig.subplots()
    ax.imshow(probs_TV, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for t in range(probs_TV.shape[0]):
        for v in range(probs_TV.shape[1]):
            c = "white" if probs_TV[t, v] > 0.6 else "black"
            ax.text(v, t, f"{probs_TV[t, v]:.2f}", ha="center", va="center", fontsize=7, color=c)
    ax.set_xticks(range(len(cols)), [_label(c) for c in cols])
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=7)
    ax.set_xlabel("next token")
    ax.set_title("softmax at each output position", fontsize=10)
    return _save(fig, path)


@_with_fonts
def explain_stages(
    cfg: Config, params, tok, tokens: list[int], max_new: int, out: Path | None, say=print
) -> dict[str, Any]:
    """Section 6: the prompt's greedy continuation, then every stage of the forward pass over
    the whole sequence (prompt + output), each layer's attention per head as PNGs, and the
    softmax at every output position (all tokens when the vocabulary is small, else the top 5).
    """
    m = cfg.model
    n = min(max_new, m.max_seq_len - len(tokens))
    new: list[int] = []
    if n >= 1:
        new = sampling.generate(params, m, [tokens], jax.random.PRNGKey(0), n, GREEDY,
                                eos_id=tok.eos_id, pad_id=tok.pad_id)[0]  # fmt: skip
    seq = tokens + [int(i) for i in new]
    pieces = pieces_lib.labels(tok, seq)
    rec = recorded_stages(params, m, seq)
    P, T = len(tokens), len(seq)
    say(f"\n== 6. every stage, over the prompt and its greedy output ({T} tokens) ==")
    say("greedy output, one token at a time (each fed back as the next input): "
        + " ".join(pieces[P:]))  # fmt: skip
    say(f"whole sequence: {' '.join(pieces)}")
    pngs = _stage_embeddings(say, params, tok, m, rec, pieces, out)
    for layer in range(m.n_layers):
        pngs += _stage_layer(say, m, rec, layer, pieces, P, out)
    rows, probs = _stage_output(say, tok, rec, pieces, P, out, pngs)
    return {
        "sequence": seq,
        "pieces": pieces,
        "output": [int(i) for i in new],
        "output_probs": probs[rows].tolist() if rows else [],
        "shapes": {k: list(v.shape) for k, v in rec.items()},
        "pngs": pngs,
    }


def _stage_embeddings(say, params, tok, m: ModelConfig, rec, pieces, out: Path | None):
    """The input embeddings, every row (and the whole table for a small model); PNG paths."""
    T = len(pieces)
    say(f"\n-- embeddings: x = embed[token] + pos_embed[position], D={m.d_model} --")
    embed = np.asarray(params["embed"], np.float32)
    if embed.shape[0] <= 16 and m.d_model <= 64:  # a small model: every number of every row
        say(f"  the embedding table, all {m.d_model} numbers of each token's row:")
        for i in range(tok.vocab_size):
            say(f"    {piece(tok, i):>6}  " + " ".join(f"{v:+.2f}" for v in embed[i]))
    _rows(rec["embedded"], pieces, say, "x")
    if out is None:
        return []
    fig = _figure(10, 1.5 + 0.25 * T)
    ax = fig.subplots()
    lim = float(np.abs(rec["embedded"]).max()) or 1.0
    ax.imshow(rec["embedded"], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_yticks(range(T), [_label(p) for p in pieces], fontsize=7)
    ax.set_xlabel(f"embedding dimension (0..{m.d_model - 1})")
    ax.set_title("input embeddings (token + position), one row per position", fontsize=10)
    return [_save(fig, out / "stages_embeddings.png")]


def _stage_layer(say, m: ModelConfig, rec, layer: int, pieces, P: int, out: Path | None):
    """One layer's stages, from its norm to the stream it leaves; PNG paths."""
    N, K, H, T = m.n_heads, m.kv_heads, m.head_dim, len(pieces)
    say(f"\n-- layer {layer} --")
    say(f"  {m.norm}: each position's vector rescaled to mean 0, std 1 (times a learned scale)")
    _rows(rec["attn_norm"][layer], pieces, say, "attn_norm")
    say(f"  Q = norm @ wq [T, N={N}, H={H}], K and V = norm @ wk, wv [T, {K}, {H}]")
    for name in ("q", "k", "v"):
        a = rec[name][layer]
        say(f"    {name} at the last position, per head: "
            + "; ".join(_vec(a[-1, h]) for h in range(a.shape[1])))  # fmt: skip
    temp = "H (muP)" if mup.is_mup(m) else "sqrt(H)"
    say(f"  attention per head: softmax(q k^T / {temp}) over earlier positions; for each "
        "output position, the input it attends to most:")  # fmt: skip
    w = rec["attention"][layer]
    for t in range(max(P - 1, 0), T):
        top = [f"h{h}->{t_}:{pieces[t_]} ({w[h, t, t_]:.2f})"
               for h in range(N) for t_ in [int(np.argmax(w[h, t]))]]  # fmt: skip
        say(f"    {t:>3} {pieces[t]:>6}: " + ", ".join(top))
    say(f"  projection: heads [T, {N}x{H}] @ wo -> [T, {m.d_model}], added to the stream")
    _rows(rec["attn_out"][layer], pieces, say, "attn_out")
    say(f"  MLP: norm, then [T, {m.d_model}] -> {m.mlp} [T, {m.ffw_dim}] -> [T, {m.d_model}]")
    f = rec["mlp_hidden"][layer]
    say("    hidden units above 0 per position: "
        + " ".join(f"{(f[t] > 0).mean():.2f}" for t in range(T)))  # fmt: skip
    _rows(rec["mlp_out"][layer], pieces, say, "mlp_out")
    say(
        "  stream after the layer, |x| per position: "
        + " ".join(f"{np.linalg.norm(rec['x_out'][layer][t]):.2f}" for t in range(T))
    )
    if out is None:
        return []
    return [plot_attention(w, pieces, layer, out / f"stages_attention_layer{layer}.png"),
            plot_stages(rec, layer, pieces, out / f"stages_layer{layer}.png")]  # fmt: skip


def _stage_output(say, tok, rec, pieces, P: int, out: Path | None, pngs: list[str]):
    """The softmax at each position whose next token was generated; its figure is added to
    `pngs`, and every figure named. Returns (those positions, the softmax [T, V])."""
    T = len(pieces)
    logits = rec["logits"].astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    V = tok.vocab_size
    say(f"\n-- output: final norm, logits [T, V={logits.shape[1]}], softmax per position --")
    rows = list(range(max(P - 1, 0), T - 1))  # positions whose next token was generated
    if V <= 16:
        cols = list(range(V))
        say("  " + " " * 18 + "".join(f"{piece(tok, c):>7}" for c in cols) + "   chosen")
        for t in rows:
            say(f"  {t:>3} after {pieces[t]:>6}:  " + "".join(f"{probs[t, c]:7.3f}" for c in cols)
                + f"   {pieces[t + 1]}")  # fmt: skip
    else:
        for t in rows:
            o = np.argsort(-probs[t])[:5]
            say(f"  {t:>3} after {pieces[t]:>6}: "
                + ", ".join(f"{piece(tok, int(i))} {probs[t, i]:.3f}" for i in o))  # fmt: skip
    if out is not None and rows:
        cols = list(range(V)) if V <= 16 else sorted({int(np.argmax(probs[t])) for t in rows})
        table = probs[np.asarray(rows)][:, cols]
        labels = [f"{t}: after {pieces[t]}" for t in rows]
        pngs.append(plot_output_probs(table, labels, [piece(tok, c) for c in cols],
                                      out / "stages_output_probs.png"))  # fmt: skip
        say(f"figures: {', '.join(Path(p).name for p in pngs)} in {out}")
    return rows, probs


@_with_fonts
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
    X_QD = np.stack(vecs)
    unit_QD = X_QD / np.maximum(np.linalg.norm(X_QD, axis=-1, keepdims=True), 1e-30)
    cos_QQ = unit_QD @ unit_QD.T
    centered_QD = X_QD - X_QD.mean(0)
    _, s, vt = np.linalg.svd(centered_QD, full_matrices=False)
    xy_Q2 = np.zeros((len(words), 2))
    k = min(2, vt.shape[0])
    xy_Q2[:, :k] = centered_QD @ vt[:k].T
    var = s**2
    explained = (var[:2] / var.sum()).tolist() if var.sum() > 0 else [0.0, 0.0]
    result = {
        "words": list(words),
        "cosine": cos_QQ.tolist(),
        "pca": xy_Q2.tolist(),
        "explained_variance": explained,
    }
    if png is not None:
        fig = _figure(5, 4.5)
        ax = fig.subplots()
        ax.scatter(xy_Q2[:, 0], xy_Q2[:, 1])
        for (x, y), w in zip(xy_Q2, words, strict=True):
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
