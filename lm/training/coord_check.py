"""The coordinate check of muP (Yang et al. 2022, arXiv:2203.03466, section 8 / Figure 5): train
the same model at several widths for a few steps and see how the size of its activations'
coordinates, and of their change, depends on width.

    result = coord_check(lambda d: cfg_with_width(d), widths=[64, 128, 256, 512], steps=4)
    slope(result, "logits")  # ~0 under muP; ~1 under sp with Adam (the change grows with width)

For each width: the weights from the config's seed, then `steps` optimizer steps of the real
train step (`lm.training.train.make_train_step`: the real loss, AdamW from `make_optimizer`, the
config's schedule), all on one fixed random batch; recorded on that batch, at init and after the
steps, the RMS of every stage's coordinates (`stage_names`) and the RMS of their change. Under
muP every stage's change is flat in width; under sp with one learning rate the hidden states'
and logits' change grows with width (Adam moves every coordinate of a weight by about the
learning rate, and a width-d input sums d of those moves), which is what limits sp's learning
rate as models widen. tests/training/test_coord_check.py holds both to measured numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm.config import Config, MeshConfig, ModelConfig
from lm.model import transformer
from lm.training import sharding, train


def stage_names(cfg: ModelConfig) -> list[str]:
    """The stages recorded: the embedding's output, each block's output (the residual stream),
    the final norm's output (before muP's output multiplier) and the logits."""
    return ["embed", *(f"block{i}" for i in range(cfg.n_layers)), "final_norm", "logits"]


@functools.partial(jax.jit, static_argnames="cfg")
def _stages(params, tokens_BT, *, cfg: ModelConfig) -> dict[str, jax.Array]:
    """Every stage's activations on tokens_BT, float32."""
    x_BTD = transformer.embed(params, tokens_BT, None, cfg)
    pos_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    out = {"embed": x_BTD}
    for i in range(cfg.n_layers):
        x_BTD = transformer.block(transformer.layer_params(params, i), x_BTD, pos_BT, cfg)[0]
        out[f"block{i}"] = x_BTD
    out["final_norm"] = transformer.norm(params["final_norm"], x_BTD, cfg)
    out["logits"] = transformer.unembed(params, x_BTD, cfg)
    return {k: v.astype(jnp.float32) for k, v in out.items()}


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def run_one(cfg: Config, steps: int, batch_BW: np.ndarray) -> dict[str, dict[str, float]]:
    """One width: {"init": {stage: RMS at init}, "trained": {stage: RMS after the steps},
    "change": {stage: RMS of (trained - init)}}, on the windows batch_BW [B, W]."""
    lay = train.layout(cfg, sharding.make_mesh(MeshConfig(), jax.devices()[:1]))
    step_fn = train.make_train_step(cfg, lay)

    @jax.jit
    def run(batches_CABW):
        # init, the steps (the real train step, inlined) and both records: one compile
        state = train.init_state(cfg, lay, cfg.train.seed)
        tokens_BT = batches_CABW[0, 0, :, :-1]
        x0 = _stages(state["params"], tokens_BT, cfg=cfg.model)
        state, metrics = step_fn(state, batches_CABW)
        return x0, _stages(state["params"], tokens_BT, cfg=cfg.model), metrics["loss"]

    batches_CABW = jnp.asarray(np.broadcast_to(batch_BW, (steps, 1, *batch_BW.shape)))
    # XLA's backend optimizations cost more than the few steps they would speed up
    fast = run.lower(batches_CABW).compile(compiler_options={"xla_backend_optimization_level": 0})
    x0, x1, losses = jax.device_get(fast(batches_CABW))
    if not np.isfinite(losses).all():
        raise FloatingPointError(f"d_model={cfg.model.d_model}: loss {losses} (lr too high?)")
    return {
        "init": {k: _rms(x0[k]) for k in x0},
        "trained": {k: _rms(x1[k]) for k in x1},
        "change": {k: _rms(x1[k] - x0[k]) for k in x0},
    }


def coord_check(
    cfg_for_width: Callable[[int], Config],
    widths: Sequence[int],
    steps: int = 4,
    batch: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """The coordinate check over `widths` (each a d_model; `cfg_for_width(d)` is the run at
    width d): {"widths": [W], "stages": names, "init" / "trained" / "change": {stage: [W]}}
    (see `run_one`). Every width takes `steps` steps on the same batch of `batch` random
    windows (seed `seed`) of the first config's train.seq_len + 1 tokens."""
    first = cfg_for_width(widths[0])
    V, W = first.model.vocab_size, first.train.seq_len + 1
    batch_BW = np.random.RandomState(seed).randint(0, V, (batch, W)).astype(np.int32)
    runs = []
    for d in widths:
        cfg = cfg_for_width(d)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))
        runs.append(run_one(cfg, steps, batch_BW))
    out: dict[str, Any] = {"widths": list(widths), "stages": stage_names(first.model)}
    for kind in ("init", "trained", "change"):
        out[kind] = {k: np.array([r[kind][k] for r in runs]) for k in out["stages"]}
    return out


def slope(result: dict[str, Any], stage: str, kind: str = "change") -> float:
    """The least-squares slope of log(RMS) against log(width) for one stage's `kind` ("init",
    "trained" or "change"): 0 is flat in width, 1 grows linearly."""
    x, y = np.log(result["widths"]), np.log(result[kind][stage])
    return float(np.polyfit(x, y, 1)[0])
