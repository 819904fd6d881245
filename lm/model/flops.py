"""Parameter counts and FLOPs per token, under the conventions scaling-law papers use.

Parameter counts come from `model.param_specs`, the same description `init` builds from, and
tests check them against the real pytree.

FLOPs per *training* token (forward + backward = 3x forward), side by side:
- `6N`: Kaplan et al. 2020 (arXiv:2001.08361, Sec. 2.1) C = 6N with N the non-embedding params.
- `6N_attn`: 6N plus causal attention. Per layer and token at position t, QK^T and AV each cost
  2*t*d_attn forward; averaged over t = 1..T that is 2*d_attn*(T+1) forward, x3 for training.
- `6N_out`: 6 x (non-embedding + output-layer params): the count that, with total params, resolves
  the Kaplan/Chinchilla exponent gap (Porian et al. 2024, arXiv:2406.19146; Pearce & Song 2024,
  arXiv:2406.12907).
- `6N_out_attn`: `6N_out` plus the same causal attention term as `6N_attn`, i.e.
  6(N + D*V) + 3 * causal_attn_fwd: Porian et al. 2024's effective count, which charges both the
  output layer and attention, whose share of the FLOPs is largest at the small sizes a cheap
  sweep trains. Its parameter count is `count_params(cfg)["non_embedding_out"]`.
- `chinchilla`: Hoffmann et al. 2022 (arXiv:2203.15556) Appendix F, which counts embeddings, the
  output layer, the softmax, and full (non-causal) attention, backward = 2x forward.
- `hardware`: what the compiled step really multiplies: every matmul weight (the output layer
  too, not the embedding gather) plus full T x T attention, i.e. PaLM's 6N + 12*L*H*Q*T
  (Chowdhery et al. 2022, arXiv:2204.02311, App. B). MFU uses this one.
"""

from __future__ import annotations

import math

import jax

from lm.config import ModelConfig
from lm.model.transformer import is_spec, param_specs

CONVENTIONS = ("6N", "6N_attn", "6N_out", "6N_out_attn", "chinchilla", "hardware")


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Total, embedding (token, position and untied output tables) and non-embedding counts,
    and `non_embedding_out`: non-embedding plus the output layer's d_model x vocab weights
    (counted once whether or not they are tied to the token table), the N of `6N_out`."""
    specs = jax.tree_util.tree_leaves(param_specs(cfg), is_leaf=is_spec)
    total = sum(math.prod(s.shape) for s in specs)
    emb = sum(math.prod(s.shape) for s in specs if s.embedding)
    return {
        "total": total,
        "embedding": emb,
        "non_embedding": total - emb,
        "non_embedding_out": total - emb + cfg.d_model * cfg.vocab_size,
    }


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token (forward + backward) under each convention in CONVENTIONS."""
    n = count_params(cfg)["non_embedding"]
    D, V, L, T = cfg.d_model, cfg.vocab_size, cfg.n_layers, seq_len
    d_attn = cfg.n_heads * cfg.head_dim
    out = D * V  # the output layer's weights, tied or not
    causal_attn_fwd = L * 2 * d_attn * (T + 1)
    full_attn_fwd = L * 4 * d_attn * T

    # Chinchilla App. F, forward FLOPs per sequence, divided by the sequence length.
    kv = cfg.kv_heads * cfg.head_dim
    F = cfg.ffw_dim
    n_mlp_mats = 3 if cfg.mlp == "swiglu" else 2
    chin_fwd = (
        2 * V * D  # embedding (App. F counts it as a matmul with a one-hot)
        + L
        * (
            2 * D * (d_attn + 2 * kv)  # q, k, v projections
            + 2 * T * d_attn  # logits
            + 3 * cfg.n_heads * T  # softmax
            + 2 * T * d_attn  # softmax @ values
            + 2 * d_attn * D  # output projection
            + 2 * n_mlp_mats * D * F  # dense block
        )
        + 2 * D * V  # final logits
    )
    return {
        "6N": 6.0 * n,
        "6N_attn": 6.0 * n + 3.0 * causal_attn_fwd,
        "6N_out": 6.0 * (n + out),
        "6N_out_attn": 6.0 * (n + out) + 3.0 * causal_attn_fwd,
        "chinchilla": 3.0 * chin_fwd,
        "hardware": 6.0 * (n + out) + 3.0 * full_attn_fwd,
    }
