"""The simplest language model: next-token counts given the previous token, add-k smoothed.

P(b | a) = (count(a, b) + k) / (count(a) + k V). It is fitted by counting the training split,
evaluated on the same validation windows as the Transformer (so its loss and bits per byte sit
beside theirs as the baseline every curve should beat), and sampled with the same sampling
functions (`lm.inference.sampling.generate_bigram`). `lm train` runs it when the config says
`kind: bigram` (`lm.training.counting`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

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


def load(run_dir: str | Path) -> np.ndarray:
    path = Path(run_dir) / TABLE_FILE
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a bigram table ({e})") from None
