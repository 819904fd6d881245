"""The simplest language model: next-token counts given the previous token, add-k smoothed.

P(b | a) = (count(a, b) + k) / (count(a) + k V). It is fitted by counting the training split,
evaluated on the same validation windows as the Transformer (so its loss and bits per byte sit
beside theirs as the baseline every curve should beat), and sampled with the same sampling
functions. `lm train` runs it when the config says `kind: bigram`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lm import data, sampling
from lm.config import Config

TABLE_FILE = "bigram.npy"


def fit(tokens: np.ndarray, vocab: int, add_k: float) -> np.ndarray:
    """float32 [V, V] log P(next | prev), counted from one token stream."""
    t = np.asarray(tokens, np.int64)
    counts = np.bincount(t[:-1] * vocab + t[1:], minlength=vocab * vocab).astype(np.float64)
    counts = counts.reshape(vocab, vocab) + add_k
    return np.log(counts / counts.sum(-1, keepdims=True)).astype(np.float32)


def window_losses(logp_VV: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Nats of each next token in each [T+1] window: [n, T], as the Transformer is scored."""
    return -logp_VV[windows[:, :-1], windows[:, 1:]].astype(np.float64)


def evaluate(logp_VV: np.ndarray, windows: np.ndarray, token_bytes: np.ndarray):
    """(mean loss, standard error over windows, bits per byte) on fixed validation windows."""
    losses = window_losses(logp_VV, windows)
    per_window = losses.mean(-1)
    se = per_window.std(ddof=1) / math.sqrt(len(per_window)) if len(per_window) > 1 else 0.0
    nbytes = token_bytes[windows[:, 1:]].sum()
    return float(per_window.mean()), float(se), float(losses.sum() / (math.log(2) * nbytes))


def generate(
    logp_VV, prompt: list[int], key, max_new_tokens: int, temperature=1.0, top_k=None,
    top_p=None, min_p=None, eos_id: int | None = None,
) -> list[int]:  # fmt: skip
    """New tokens after `prompt`, drawn with the same `sampling.sample_token` as the
    Transformer; stops after EOS."""
    if not prompt:
        raise ValueError("prompt: needs at least one token (use BOS)")
    table = jnp.asarray(logp_VV)

    def step(prev, k):
        tok = sampling.sample_token(k, table[prev][None], temperature, top_k, top_p, min_p)[0]
        return tok, tok

    keys = jax.random.split(key, max_new_tokens)
    _, out = jax.lax.scan(step, jnp.int32(prompt[-1]), keys)
    out = [int(x) for x in np.asarray(out)]
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id) + 1]
    return out


def train_run(cfg: Config, run_dir: str | Path, print_fn=print) -> dict:
    from lm import runlock
    from lm.config import ConfigError
    from lm.loop import check_run_dir, get_tokenizer

    run_dir = Path(run_dir)
    # As lm.loop.train_run: the inputs are checked before anything is written to run_dir.
    check_run_dir(cfg, run_dir)
    tok = get_tokenizer(cfg, run_dir, save=False)
    try:
        tokens = data.prepare_data(cfg.data, tok, progress=True)
        windows = data.val_windows(tokens.val, cfg.train.eval_windows, cfg.train.seq_len)
    except ValueError as e:
        why = str(e)
        src = f"data.source={cfg.data.source!r}: "
        raise ConfigError(why if why.startswith("data.") else src + why) from None
    with runlock.hold(run_dir, warn=print_fn):
        return _train_locked(cfg, run_dir, tok, tokens, windows, print_fn)


def _train_locked(cfg: Config, run_dir: Path, tok, tokens, windows, print_fn) -> dict:
    from lm.loop import MetricsLog, has_tokenizer, prepare_run_dir, unigram_entropy
    from lm.tokenizer import save_tokenizer

    prepare_run_dir(cfg, run_dir)
    if not has_tokenizer(run_dir):
        save_tokenizer(tok, run_dir)
    V = tok.vocab_size
    logp = fit(tokens.train, V, cfg.bigram.add_k)
    np.save(run_dir / TABLE_FILE, logp, allow_pickle=False)
    vl, se, bpb = evaluate(logp, windows, tok.token_bytes())
    t = np.asarray(tokens.train, np.int64)
    train_loss = float(-logp[t[:-1], t[1:]].astype(np.float64).mean())
    log = MetricsLog(run_dir, resume_step=-1)
    n = len(tokens.train)
    log.write({"step": 1, "tokens": n, "train_loss": train_loss})
    log.write({"step": 1, "tokens": n, "val_loss": vl, "val_loss_se": se, "val_bpb": bpb})
    log.close()
    uni = unigram_entropy(tokens.train, tokens.val, V)
    print_fn(
        f"bigram (add-{cfg.bigram.add_k}) on {n:,} tokens: val_loss {vl:.4f} ± {se:.4f} "
        f"nats/token ({bpb:.4f} bits/byte) vs unigram entropy {uni:.4f}"
    )
    summary = {
        "val_loss": vl,
        "val_loss_se": se,
        "val_bpb": bpb,
        "train_loss": train_loss,
        "unigram_entropy": uni,
    }
    (run_dir / "bigram.json").write_text(json.dumps(summary, indent=1))
    return summary | {"table": logp, "tokenizer": tok}


def load(run_dir: str | Path) -> np.ndarray:
    path = Path(run_dir) / TABLE_FILE
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a bigram table ({e})") from None
