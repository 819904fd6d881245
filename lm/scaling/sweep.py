"""Scaling sweeps: a family of runs over model size N and data size D, from one file.

A sweep file (configs/sweeps/*.yaml) names model *sizes* (target non-embedding parameters),
not layer counts: `shape_for` turns a size into depth, width and heads at a fixed aspect ratio.
Two kinds:
- grid: every size x every token budget D;
- isoflop: every compute budget C x every size, with D = C / FLOPs-per-token(N).

Per-size rules (documented in the README, each a documented choice, not a tuned result):
- learning rate: Kaplan et al. 2020 (arXiv:2001.08361) eq. D.1,
  LR(N) = 0.003239 - 0.0001395 log N, times `lr_scale`;
- warmup: max(100 steps, N tokens) (Porian et al. 2024, arXiv:2406.19146), capped at a quarter of
  the shortest run of that size so that every cooldown starts after warmup;
- AdamW beta2 = 0.99 for small batches (Porian et al.); batch and context fixed by the base config.

Many data sizes from one run (Hägele et al. 2024, arXiv:2405.18392): with `schedule: wsd`, all
members of one size share their warmup and stable phase, so the longest is trained once (the
trunk) and each shorter one branches off the trunk's checkpoint where its own cooldown starts.
Because the batch at step s is a pure function of (seed, s), a branch is *exactly* the WSD run of
its own length, at a fraction of the cost.

`lm sweep run FILE --out DIR` is idempotent: finished members are skipped, interrupted ones resume
from their checkpoints, and the results table is rebuilt from the members' own records. Members
train side by side in worker processes on disjoint slices of the machine (`--workers`), and
several hosts can split one sweep directory between them (`--worker-index/--num-workers`); see
lm.scaling.workers.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import socket
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lm import config as config_lib
from lm.config import Config, ConfigError
from lm.hardware import precision
from lm.hardware.peak import cpu_features, peak_flops, precision_of
from lm.model import flops
from lm.scaling import workers as workers_lib
from lm.util import dirlock
from lm.util.files import atomic_write

DONE_FILE = "done.json"


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    kind: Literal["grid", "isoflop"] = "grid"
    base: dict = field(default_factory=dict)  # a run config (as in configs/), shared by members
    sizes: tuple[float, ...] = ()  # target non-embedding parameter counts
    tokens: tuple[float, ...] = ()  # grid: token budgets D
    budgets: tuple[float, ...] = ()  # isoflop: compute budgets C (FLOPs)
    flops_convention: str = "6N"  # how C and D = C/FLOPs-per-token are counted
    aspect: int = 32  # d_model / n_layers
    head_dim: int = 16
    min_layers: int = 2
    lr_scale: float = 1.0  # multiplies Kaplan's LR(N)
    schedule: Literal["wsd", "cosine"] = "wsd"
    cooldown_fraction: float = 0.2  # wsd: share of each member's steps spent decaying
    compare_cosine: bool = True  # also train separate cosine runs for the smallest size
    seeds: int = 3  # seeds for the smallest size at its largest D (seed-to-seed spread)
    eval_tokens: int = 100_000  # held-out tokens each D point is evaluated on
    # isoflop: skip (C, N) pairs far from any plausible optimum (Chinchilla's is ~20 D/N)
    min_tokens_per_param: float = 1.0
    max_tokens_per_param: float = 1000.0
    mfu_estimate: float = 0.3  # for `lm sweep plan` wall-time estimates
    # Learning-rate tuning (empty lr_sweep_sizes: Kaplan's LR(N) x lr_scale, untuned). Each of
    # lr_sweep_sizes is trained at every rate in lr_sweep_lrs for D = lr_sweep_tokens_per_param
    # x N tokens; each size's optimum (a parabola in log lr around its best rate) gives the rule
    # lr(N) = k N^p by least squares in log space, and every main member uses that rule.
    # Under muP (base model.parametrization: mup) the rate transfers across width instead: one
    # proxy size is tuned (lr_sweep_sizes has exactly one), its optimum is every member's rate
    # (the rule's p is 0), and every member's model.mup_base_width is the proxy's d_model, so
    # muP equals the standard parametrization at the width where the rate was tuned.
    # lr_sweep_seeds: seeds per (size, rate); the optimum is taken from their mean loss.
    lr_sweep_sizes: tuple[float, ...] = ()
    lr_sweep_lrs: tuple[float, ...] = ()
    lr_sweep_tokens_per_param: float = 100.0
    lr_sweep_seeds: int = 1
    # The design check (`lm sweep plan`, and before a sweep runs): where the optimum is expected
    # (D/N, N counted as the convention counts it) and how many sizes each budget needs around it.
    expected_tokens_per_param: float = 20.0
    min_sizes_per_budget: int = 5
    min_sizes_each_side: int = 2
    # A prediction tested out of sample (isoflop only; 0: off). Once every main member is done,
    # approach 2 (Hoffmann et al. 2022, arXiv:2203.15556, sec. 3.2; the report's primary fit,
    # no bootstrap) on their results predicts N_opt at C_out = holdout_budget_factor x the
    # largest budget, and three whole runs at N_opt/2, N_opt and 2 N_opt spend C_out each
    # (group "holdout", never fitted): the report says whether N_opt was the best of them and
    # how well each approach predicted their loss. At least 3, so that C_out lies half a decade
    # beyond the fitted budgets rather than within their own spacing. Costs 3 x C_out more
    # compute, each run more than any main member (a trunk included); `lm sweep plan` says.
    holdout_budget_factor: float = 0.0

    def __post_init__(self):
        check = lambda ok, k, v, why: ok or _bad(f"{k}={v!r}: {why}")  # noqa: E731
        check(self.kind in ("grid", "isoflop"), "kind", self.kind, "must be grid or isoflop")
        check(len(self.sizes) >= 1, "sizes", self.sizes, "needs at least one model size")
        check(all(math.isfinite(s) and s > 0 for s in self.sizes), "sizes", self.sizes,
              "must be finite and > 0")  # fmt: skip
        if self.kind == "grid":
            check(len(self.tokens) >= 1, "tokens", self.tokens, "a grid needs token budgets")
            check(all(math.isfinite(t) and t > 0 for t in self.tokens), "tokens", self.tokens,
                  "must be finite and > 0")  # fmt: skip
        else:
            check(len(self.budgets) >= 1, "budgets", self.budgets, "isoflop needs budgets")
            check(all(math.isfinite(c) and c > 0 for c in self.budgets), "budgets", self.budgets,
                  "must be finite and > 0")  # fmt: skip
        check(
            self.flops_convention in flops.CONVENTIONS,
            "flops_convention",
            self.flops_convention,
            f"must be one of {', '.join(flops.CONVENTIONS)}",
        )
        check(
            0 < self.cooldown_fraction < 1,
            "cooldown_fraction",
            self.cooldown_fraction,
            "must be in (0, 1)",
        )
        check(self.aspect >= 1, "aspect", self.aspect, "must be >= 1")
        check(self.head_dim >= 2, "head_dim", self.head_dim, "must be >= 2")
        check(self.min_layers >= 1, "min_layers", self.min_layers, "must be >= 1")
        check(self.seeds >= 1, "seeds", self.seeds, "must be >= 1")
        check(self.eval_tokens >= 1, "eval_tokens", self.eval_tokens, "must be >= 1")
        check(self.lr_scale > 0, "lr_scale", self.lr_scale, "must be > 0")
        check(self.lr_sweep_seeds >= 1, "lr_sweep_seeds", self.lr_sweep_seeds, "must be >= 1")
        if self.lr_sweep_sizes and self.transfers_lr:
            check(len(self.lr_sweep_sizes) == 1, "lr_sweep_sizes", self.lr_sweep_sizes,
                  "model.parametrization=mup tunes the rate at one proxy size")  # fmt: skip
        elif self.lr_sweep_sizes:
            check(len(self.lr_sweep_sizes) >= 2, "lr_sweep_sizes", self.lr_sweep_sizes,
                  "needs >= 2 sizes to fit lr(N)")  # fmt: skip
            check(all(math.isfinite(n) and n > 0 for n in self.lr_sweep_sizes), "lr_sweep_sizes",
                  self.lr_sweep_sizes, "must be finite and > 0")  # fmt: skip
            check(len(self.lr_sweep_lrs) >= 3, "lr_sweep_lrs", self.lr_sweep_lrs,
                  "needs >= 3 rates to locate an optimum")  # fmt: skip
            check(all(math.isfinite(x) and x > 0 for x in self.lr_sweep_lrs), "lr_sweep_lrs",
                  self.lr_sweep_lrs, "must be finite and > 0")  # fmt: skip
            check(self.lr_sweep_tokens_per_param > 0, "lr_sweep_tokens_per_param",
                  self.lr_sweep_tokens_per_param, "must be > 0")  # fmt: skip
        check(self.expected_tokens_per_param > 0, "expected_tokens_per_param",
              self.expected_tokens_per_param, "must be > 0")  # fmt: skip
        check(self.min_sizes_per_budget >= 3, "min_sizes_per_budget", self.min_sizes_per_budget,
              "must be >= 3 (a parabola)")  # fmt: skip
        check(self.min_sizes_each_side >= 1, "min_sizes_each_side", self.min_sizes_each_side,
              "must be >= 1")  # fmt: skip
        f = self.holdout_budget_factor
        check(math.isfinite(f) and (f == 0 or f >= 3), "holdout_budget_factor", f,
              "must be 0 (off) or >= 3 (x the largest budget)")  # fmt: skip
        check(f == 0 or self.kind == "isoflop", "holdout_budget_factor", f,
              "needs kind: isoflop (it scales the largest IsoFLOP budget)")  # fmt: skip

    @property
    def transfers_lr(self) -> bool:
        """The members' model is muP (`base.model.parametrization`): one tuned rate for all."""
        return (self.base.get("model") or {}).get("parametrization") == "mup"


def _bad(msg: str):
    raise ConfigError(msg)


def load_sweep(path: str | Path, overrides: list[str] = ()) -> SweepConfig:
    raw = config_lib.read_yaml(path)
    if isinstance(raw.get("base"), str):  # a path to a run config, relative to the sweep file
        p = Path(path).parent / raw["base"]
        raw["base"] = config_lib.read_yaml(p if p.is_file() else Path(raw["base"]))
    raw = config_lib.apply_overrides(raw, list(overrides))
    base = raw.pop("base", {}) or {}
    if not isinstance(base, dict):
        raise ConfigError(f"base={base!r}: expected a run config (a mapping) or a path to one")
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    for k in raw:
        if k not in names:
            raise ConfigError(f"unknown sweep key {k} (known: {', '.join(sorted(names))})")
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        if k in ("sizes", "tokens", "budgets", "lr_sweep_sizes", "lr_sweep_lrs"):
            try:
                kw[k] = tuple(float(x) for x in (v if isinstance(v, list) else [v]))
            except (TypeError, ValueError):
                raise ConfigError(f"{k}={v!r}: expected a list of numbers") from None
        else:
            kw[k] = config_lib.coerce(k, v, typing.get_type_hints(SweepConfig)[k])
    sweep = SweepConfig(base=base, **kw)
    config_lib.from_dict(base)  # the base must be a valid run config on its own
    return sweep


# ---------------------------------------------------------------- members


def shape_for(n_target: float, aspect: int, head_dim: int, min_layers: int) -> dict[str, int]:
    """Depth, width and heads for ~n_target non-embedding params at d_model ~ aspect x n_layers.

    N ~= 12 L d^2 (Kaplan et al. 2020), so L = (N / (12 aspect^2))^(1/3); d is then solved from
    N and L and rounded to whole heads, which keeps N close to the target."""
    L = max(min_layers, round((n_target / (12 * aspect**2)) ** (1 / 3)))
    d = math.sqrt(n_target / (12 * L))
    heads = max(1, round(d / head_dim))
    return {"n_layers": L, "d_model": heads * head_dim, "n_heads": heads}


def kaplan_lr(n: float) -> float:
    """Kaplan et al. 2020 eq. D.1: the learning rate that worked across their model sizes."""
    return 0.003239 - 0.0001395 * math.log(n)


def params_for(model: config_lib.ModelConfig, convention: str) -> int:
    """The parameter count N that goes with a FLOP convention: non-embedding for 6N and 6N_attn
    (Kaplan), non-embedding + output layer for 6N_out, 6N_out_attn and hardware (Porian et al.
    2024's effective N), every parameter for chinchilla (Hoffmann et al. 2022)."""
    c = flops.count_params(model)
    if convention in ("6N", "6N_attn"):
        return c["non_embedding"]
    if convention == "chinchilla":
        return c["total"]
    return c["non_embedding_out"]


@dataclass(frozen=True)
class LRRule:
    """lr(N) = k N^p, N counted as the sweep's convention counts it (`params_for`)."""

    k: float
    p: float

    def __call__(self, n: float) -> float:
        return self.k * n**self.p


@dataclass(frozen=True)
class Member:
    name: str
    cfg: Config
    n_target: float
    N: int  # non-embedding params
    N_total: int
    D: int  # training tokens
    budget: float | None  # the isoflop budget it belongs to
    trunk: str | None  # the member it branches off (wsd), or None
    branch_step: int | None
    group: str  # "main", "seed", "cosine", "lr" or "holdout"


def _member_cfg(sweep: SweepConfig, n_target: float, steps: int, warmup: int, seed: int,
                schedule: str, lr: float) -> Config:  # fmt: skip
    raw = json.loads(json.dumps(sweep.base))
    shape = shape_for(n_target, sweep.aspect, sweep.head_dim, sweep.min_layers)
    raw.setdefault("model", {}).update(shape)
    if sweep.transfers_lr and sweep.lr_sweep_sizes:
        raw["model"].setdefault("mup_base_width", proxy_width(sweep))
    t = raw.setdefault("train", {})
    seq_len = int(t.get("seq_len", config_lib.TrainConfig.seq_len))
    t.update(
        steps=steps,
        lr=lr,
        warmup_steps=warmup,
        schedule=schedule,
        decay_fraction=sweep.cooldown_fraction,
        seed=seed,
        eval_every=steps,
        eval_windows=max(1, math.ceil(sweep.eval_tokens / seq_len)),
        ckpt_every=max(1, min(int(t.get("ckpt_every", 10**9)), steps)),
    )
    t.setdefault("beta2", 0.99)
    return config_lib.from_dict(raw)


def proxy_width(sweep: SweepConfig) -> int:
    """The d_model of the size the learning rate is tuned at (muP's base width)."""
    n = sweep.lr_sweep_sizes[0]
    return shape_for(n, sweep.aspect, sweep.head_dim, sweep.min_layers)["d_model"]


def _shape_model(sweep: SweepConfig, base: Config, n: float) -> config_lib.ModelConfig:
    return dataclasses.replace(
        base.model, **shape_for(n, sweep.aspect, sweep.head_dim, sweep.min_layers)
    )


def _warmup(n_conv: int, tpb: int, shortest_steps: int, cooldown_fraction: float) -> int:
    # Porian et al. 2024: warm up for ~N tokens, here at least 100 steps (the tuned rates are
    # high), but never past half of the size's shortest run, so that every cooldown (the last
    # cooldown_fraction < 1/2 of a run) starts after warmup. A quarter was too short: a trunk
    # whose shortest branch had 150 steps warmed up for 37 and trained measurably worse at
    # every length than its neighbours (measured on the main job).
    cap = min(shortest_steps // 2, shortest_steps - int(shortest_steps * cooldown_fraction))
    return min(max(100, round(n_conv / tpb)), max(1, cap))


def plan_lr(sweep: SweepConfig) -> list[Member]:
    """The learning-rate sweep: every lr_sweep_sizes x lr_sweep_lrs, each a whole run of
    D = lr_sweep_tokens_per_param x N tokens (no branches, so each rate has its own schedule)."""
    if not sweep.lr_sweep_sizes:
        return []
    base = config_lib.from_dict(sweep.base)
    tpb = base.train.batch_size * base.train.seq_len
    members = []
    for n in sweep.lr_sweep_sizes:
        n_conv = params_for(_shape_model(sweep, base, n), sweep.flops_convention)
        steps = max(1, round(sweep.lr_sweep_tokens_per_param * n_conv / tpb))
        warmup = _warmup(n_conv, tpb, steps, sweep.cooldown_fraction)
        for lr in sweep.lr_sweep_lrs:
            for k in range(sweep.lr_sweep_seeds):
                seed = base.train.seed + k
                cfg = _member_cfg(sweep, n, steps, warmup, seed, sweep.schedule, lr)
                name = f"lr-N{n:.3g}-lr{lr:.3g}" + (f"-s{k}" if k else "")
                members.append(_member(name, cfg, n, None, None, None, "lr"))
    return members


def plan(sweep: SweepConfig, lr_rule: LRRule | None = None) -> list[Member]:
    """Every main, seed and cosine member of the sweep, trunks before their branches.

    Learning rates: `lr_rule` (fitted by the LR sweep) when given, else Kaplan's LR(N); both times
    lr_scale. A sweep with an LR sweep is planned with Kaplan's rate until its rule is known
    (`lm sweep plan`); names, shapes, token counts and FLOPs do not depend on the rate."""
    base = config_lib.from_dict(sweep.base)
    tpb = base.train.batch_size * base.train.seq_len  # tokens per optimizer step
    points: list[tuple[float, int, float | None]] = []  # (n_target, D, budget)
    n_conv: dict[float, int] = {}
    for n in sweep.sizes:
        shape_cfg = _shape_model(sweep, base, n)
        n_conv[n] = params_for(shape_cfg, sweep.flops_convention)
        if sweep.kind == "grid":
            points += [(n, int(d), None) for d in sweep.tokens]
        else:
            fpt = flops.flops_per_token(shape_cfg, base.train.seq_len)[sweep.flops_convention]
            points += [
                (n, int(c / fpt), c)
                for c in sweep.budgets
                if sweep.min_tokens_per_param <= c / fpt / n_conv[n] <= sweep.max_tokens_per_param
            ]

    def lr_of(n: float) -> float:
        rate = lr_rule(n_conv[n]) if lr_rule is not None else kaplan_lr(n)
        return rate * sweep.lr_scale

    members: list[Member] = []
    by_size: dict[float, list[tuple[int, float | None]]] = {}
    for n, d, c in points:
        by_size.setdefault(n, []).append((d, c))
    seed_point = _seed_point(sweep, by_size, n_conv)
    for n, ds in by_size.items():
        ds = sorted(ds)
        steps_of = [max(1, round(d / tpb)) for d, _ in ds]
        warmup = _warmup(n_conv[n], tpb, steps_of[0], sweep.cooldown_fraction)
        tag = f"N{n:.3g}"
        longest = max(steps_of)
        trunk_name = f"{tag}-D{ds[-1][0]:.3g}"
        lr = lr_of(n)
        for (d, c), steps in sorted(zip(ds, steps_of, strict=True), key=lambda x: -x[1]):
            cfg = _member_cfg(sweep, n, steps, warmup, base.train.seed, sweep.schedule, lr)
            name = f"{tag}-D{d:.3g}"
            if any(m.name == name for m in members):
                continue  # two budgets rounding to the same step count
            branch = sweep.schedule == "wsd" and steps != longest
            bstep = steps - int(steps * sweep.cooldown_fraction) if branch else None
            members.append(_member(name, cfg, n, c, trunk_name if branch else None, bstep, "main"))
        smallest = min(by_size) == n
        if sweep.seeds > 1 and seed_point is not None and seed_point[0] == n:
            # Whole runs of the seed point's own length: a branch is exactly such a run, so
            # the main member is seed 0.
            d = seed_point[1]
            steps = steps_of[[x for x, _ in ds].index(d)]
            for s in range(1, sweep.seeds):
                cfg = _member_cfg(sweep, n, steps, warmup, base.train.seed + s, sweep.schedule,
                                  lr)  # fmt: skip
                members.append(_member(f"{tag}-D{d:.3g}-seed{s}", cfg, n, None,
                                       None, None, "seed"))  # fmt: skip
        if smallest and sweep.compare_cosine and sweep.schedule == "wsd":
            for (d, _), steps in zip(ds, steps_of, strict=True):
                if steps == longest:
                    continue
                cfg = _member_cfg(sweep, n, steps, warmup, base.train.seed, "cosine", lr)
                members.append(
                    _member(f"{tag}-D{d:.3g}-cosine", cfg, n, None, None, None, "cosine")
                )
    return members


def _seed_point(sweep: SweepConfig, by_size: dict, n_conv: dict) -> tuple[float, int] | None:
    """(size, D) that the extra seeds repeat: on an isoflop sweep the member of the smallest
    budget nearest its expected optimum (D/N = expected_tokens_per_param), so the spread is
    measured where the fits need it and costs one short run per seed; on a grid the smallest
    size at its largest D."""
    if not by_size:
        return None
    if sweep.kind == "grid":
        n = min(by_size)
        return n, max(d for d, _ in by_size[n])
    c0 = min(sweep.budgets)
    cands = [(n, d) for n, ds in by_size.items() for d, c in ds if c == c0]
    if not cands:
        return None
    target = math.log(sweep.expected_tokens_per_param)
    return min(cands, key=lambda nd: abs(math.log(nd[1] / n_conv[nd[0]]) - target))


def _member(name, cfg, n, budget, trunk, bstep, group) -> Member:
    counts = flops.count_params(cfg.model)
    D = cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
    return Member(name, cfg, n, counts["non_embedding"], counts["total"], D, budget, trunk,
                  bstep, group)  # fmt: skip


# ---------------------------------------------------------------- the learning-rate rule


def fit_lr_rule(points: list[dict]) -> dict:
    """The LR sweep's answer from its runs: `points` are {N, lr, loss, ...} (N under the sweep's
    convention). Per size, the optimum is the vertex of a least-squares parabola in log lr over
    the best rate and up to two rates on each side (short runs at high rates are noisy, and
    five points average more of it out than three), clipped to the rates it was fitted on; a
    best rate at the edge of those tried is taken as it is and flagged, since the true optimum
    lies beyond it. Then log lr_opt = log k + p log N by least squares (p = 0 with one size).
    Returns the lr.json document."""
    import numpy as np

    per_size = []
    for n in sorted({p["N"] for p in points}):
        # Several seeds of one (size, rate): their mean loss (the optimum of the expected loss).
        by_lr: dict[float, list[float]] = {}
        for p in points:
            if p["N"] == n:
                by_lr.setdefault(p["lr"], []).append(p["loss"])
        pts = sorted((lr, sum(v) / len(v)) for lr, v in by_lr.items())
        x = np.log([lr for lr, _ in pts])
        y = np.array([loss for _, loss in pts])
        i = int(np.argmin(y))
        edge = i in (0, len(y) - 1)
        lo_opt, note = float(x[i]), ("best rate at the edge of those tried" if edge else "")
        if not edge and len(y) >= 3:
            w = slice(max(0, i - 2), min(len(y), i + 3))
            c2, c1, _ = np.polyfit(x[w], y[w], 2)
            if c2 > 0:
                lo_opt = float(np.clip(-c1 / (2 * c2), x[w][0], x[w][-1]))
        per_size.append({"N": n, "lr_opt": math.exp(lo_opt), "best_tried": pts[i][0],
                         "edge": edge, "note": note})  # fmt: skip
    # An optimum at the edge of the rates is only a bound: the rule is fitted to the bracketed
    # sizes when at least two are, so one noisy edge cannot tilt it (the report's check still
    # flags the edge). On the main job, one small size's best rate at the top edge once made
    # the rule's exponent -1.2 instead of about -0.5 and starved the largest sizes.
    fitted = [s for s in per_size if not s["edge"]]
    if len({s["N"] for s in fitted}) < 2:
        fitted = per_size
    for s in per_size:
        s["in_rule"] = s in fitted
    lx = [math.log(s["N"]) for s in fitted]
    ly = [math.log(s["lr_opt"]) for s in fitted]
    if len(set(lx)) >= 2:
        mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
        p = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
            (a - mx) ** 2 for a in lx
        )
        logk = my - p * mx
    else:
        p, logk = 0.0, sum(ly) / len(ly)
    return {
        "method": "LR sweep: per size, a least-squares parabola in log lr (of the mean loss over "
        "seeds) over the best rate and up to two rates each side; then lr(N) = k N^p by least "
        "squares in log space over the sizes whose optimum is inside the rates tried (one size: "
        "p = 0, the muP transfer rule)",
        "points": points,
        "per_size": per_size,
        "rule": {"formula": "lr(N) = k * N^p", "k": math.exp(logk), "p": p},
    }


def _lr_points(sweep: SweepConfig, lr_members: list[Member], out: Path) -> list[dict]:
    pts = []
    for m in lr_members:
        rec = _done(out / "runs" / m.name)
        if rec is None or not math.isfinite(rec.get("val_loss") or math.nan):
            continue  # a diverged rate has no loss: it is not the optimum
        pts.append({"N": params_for(m.cfg.model, sweep.flops_convention), "lr": m.cfg.train.lr,
                    "D": m.D, "loss": rec["val_loss"], "loss_se": rec["val_loss_se"]})  # fmt: skip
    return pts


# ---------------------------------------------------------------- the out-of-sample stage

HOLDOUT_FILE = "holdout.json"
HOLDOUT_SIZES = (0.5, 1.0, 2.0)  # the holdout runs' sizes, x the predicted N_opt

# The N that the report's primary fit pairs with each convention's C (its CONVENTIONS, in
# lm.scaling.report.conventions, which the sweep does not import; tests/scaling/test_holdout.py
# keeps the two in step): the holdout's N_opt is predicted, and its sizes are shaped, in that
# count. A convention the report has no pair for counts N as params_for does.
FIT_COUNT = {"6N": "non_embedding", "6N_out": "total", "6N_out_attn": "non_embedding_out"}


def fit_count(model: config_lib.ModelConfig, convention: str) -> int:
    """A model's N as the report's primary fit counts it under the sweep's convention."""
    key = FIT_COUNT.get(convention)
    return flops.count_params(model)[key] if key else params_for(model, convention)


def _main_points(sweep: SweepConfig, main_members: list[Member], out: Path) -> list[tuple]:
    """(name, N, D, loss, C) of every finished main member with a finite loss, N and C as the
    report's primary fit counts them: the rows approach 2 is fitted to."""
    pts = []
    for m in main_members:
        loss = (_done(out / "runs" / m.name) or {}).get("val_loss")
        if loss is None or not math.isfinite(loss) or loss <= 0:
            continue  # a diverged run: the report leaves it out too
        pts.append((m.name, fit_count(m.cfg.model, sweep.flops_convention), m.D, loss,
                    compute(m)[f"C_{sweep.flops_convention}"]))  # fmt: skip
    return pts


def predict_holdout(sweep: SweepConfig, points: list[tuple]) -> dict:
    """Approach 2 on the main rows (`_main_points`), as the report fits it on an isoflop sweep's
    own rows (lm.scaling.fit's defaults, no bootstrap), and its N_opt at C_out =
    holdout_budget_factor x the largest budget: holdout.json's prediction. `error` instead of
    N_opt when approach 2 cannot be fitted (then no holdout run is planned)."""
    from lm.scaling import fit as F  # lazy: the fit library (scipy) loads only for a holdout

    c_max = max(sweep.budgets)
    c_out = sweep.holdout_budget_factor * c_max
    digest = hashlib.sha256(json.dumps(sorted((p[0], p[3]) for p in points)).encode())
    doc: dict[str, Any] = {
        "method": "approach 2 (Hoffmann et al. 2022 sec. 3.2: IsoFLOP minima, N_opt = k_N C^a) "
        "on the main runs' final losses, the report's primary fit (lm.scaling.fit defaults, no "
        "bootstrap)",
        "convention": sweep.flops_convention,
        "n_count": FIT_COUNT.get(sweep.flops_convention, "params_for"),
        "factor": sweep.holdout_budget_factor, "C_max": c_max, "C_out": c_out,
        "n_rows": len(points), "rows_sha256": digest.hexdigest(),
    }  # fmt: skip
    N, D, L, C = ([p[k] for p in points] for k in range(1, 5))
    try:
        res = F.fit_approach2(F.Runs.from_arrays(N, D, L, C))
    except F.FitError as e:
        return {**doc, "error": f"approach 2 could not be fitted: {e}"}
    p = res.params
    n_opt = p["k_N"] * c_out ** p["a"]
    if not (math.isfinite(n_opt) and n_opt > 0):
        return {**doc, "error": f"approach 2's N_opt at C_out is {n_opt!r} (a = {p['a']!r})"}
    doc.update(a=p["a"], k_N=p["k_N"], b=p["b"], k_D=p["k_D"], N_opt=n_opt,
               D_opt=p["k_D"] * c_out ** p["b"], n_budgets=res.stats["n_budgets"],
               dropped_budgets=[{"C": d["C"], "reason": d["reason"]}
                                for d in res.details["dropped_budgets"]])  # fmt: skip
    return doc


def _target_for(sweep: SweepConfig, base: Config, goal: float) -> float:
    """The shape_for target whose shape counts nearest `goal` (fit_count). shape_for aims at
    non-embedding parameters and the fit may count more (the output layer), so the target is
    iterated, target x goal / count; whole heads make the count a step function, so the
    nearest shape seen is kept."""
    t, best = goal, (math.inf, goal)
    for _ in range(20):
        got = fit_count(_shape_model(sweep, base, t), sweep.flops_convention)
        err = abs(math.log(got / goal))
        best = min(best, (err, t))
        if err < 1e-3:
            break
        t *= goal / got
    return best[1]


def plan_holdout(sweep: SweepConfig, c_out: float, n_opt: float,
                 lr_rule: LRRule | None = None) -> list[Member]:  # fmt: skip
    """The out-of-sample runs: at HOLDOUT_SIZES x n_opt (N counted as fit_count does), shapes
    from shape_for, each a whole run (no branch) of D = c_out / FLOPs-per-token under the
    sweep's convention, rounded to whole steps, with the main members' rate, warmup and seed
    rules. Sizes that round to one shape are planned once."""
    base = config_lib.from_dict(sweep.base)
    tpb = base.train.batch_size * base.train.seq_len
    conv = sweep.flops_convention
    members: list[Member] = []
    for f in HOLDOUT_SIZES:
        n = _target_for(sweep, base, f * n_opt)
        shape = _shape_model(sweep, base, n)
        n_conv = params_for(shape, conv)
        steps = max(1, round(c_out / flops.flops_per_token(shape, base.train.seq_len)[conv] / tpb))
        warmup = _warmup(n_conv, tpb, steps, sweep.cooldown_fraction)
        lr = (lr_rule(n_conv) if lr_rule is not None else kaplan_lr(n)) * sweep.lr_scale
        cfg = _member_cfg(sweep, n, steps, warmup, base.train.seed, sweep.schedule, lr)
        name = f"holdout-N{fit_count(shape, conv):.3g}-D{steps * tpb:.3g}"
        if all(m.name != name for m in members):
            members.append(_member(name, cfg, n, c_out, None, None, "holdout"))
    return members


def _write_once(path: Path, text: str) -> bool:
    """Create `path` with `text` unless it exists (False then): a hard link of a finished
    temporary file, atomic on POSIX filesystems (NFS included), so the first writer wins."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: last writer wins, same content
        atomic_write(path, text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


# What makes a holdout.json this sweep's: the same main results, budget and convention.
_HOLDOUT_KEY = ("rows_sha256", "C_out", "convention")


def holdout_doc(sweep: SweepConfig, main_members: list[Member], out: Path,
                lr_rule: LRRule | None = None) -> dict:  # fmt: skip
    """holdout.json: the prediction from these main results and the members it plans. Read
    when the file holds a prediction from the same results (a resumed sweep; another host that
    got there first), else predicted and written, the first writer winning: every host plans
    from one file, and a resumed sweep finds its finished holdout runs under the same names."""
    path = out / HOLDOUT_FILE
    points = _main_points(sweep, main_members, out)
    doc = predict_holdout(sweep, points)
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and all(old.get(k) == doc[k] for k in _HOLDOUT_KEY):
        return old
    if "N_opt" in doc:
        planned = plan_holdout(sweep, doc["C_out"], doc["N_opt"], lr_rule)
        doc["members"] = [{"name": m.name, "N": fit_count(m.cfg.model, sweep.flops_convention),
                           "D": m.D, "steps": m.cfg.train.steps, "lr": m.cfg.train.lr,
                           "n_layers": m.cfg.model.n_layers, "d_model": m.cfg.model.d_model}
                          for m in planned]  # fmt: skip
    text = json.dumps(doc, indent=1)
    if old is not None:  # from other main results (a changed design): replaced
        atomic_write(path, text)
    elif not _write_once(path, text):
        return holdout_doc(sweep, main_members, out, lr_rule)  # another host's, just written
    return doc


def _share_holdout(
    sweep: SweepConfig,
    main_members: list[Member],
    out: Path,
    main: bool,
    lr_rule: LRRule | None,
    multi: bool = False,
) -> tuple[dict | None, list[Member]]:
    """The holdout members every process plans alike: process 0 reads or writes holdout.json
    (`holdout_doc`); within a multi-process job, every process takes process 0's (C_out,
    N_opt), as `_share_rule` does the rate. No members when approach 2 could not be fitted."""
    import numpy as np

    v = np.zeros(2, np.float64)
    doc = None
    if main:
        doc = holdout_doc(sweep, main_members, out, lr_rule)
        if doc.get("N_opt"):
            v[:] = doc["C_out"], doc["N_opt"]
    if multi:
        from jax.experimental import multihost_utils

        v = np.asarray(multihost_utils.broadcast_one_to_all(v))
    if not v[1] > 0:
        return doc, []
    return doc, plan_holdout(sweep, float(v[0]), float(v[1]), lr_rule)


def compute(m: Member) -> dict[str, float]:
    fpt = flops.flops_per_token(m.cfg.model, m.cfg.train.seq_len)
    return {f"C_{k}": v * m.D for k, v in fpt.items()}


# ---------------------------------------------------------------- running


def _done(run_dir: Path) -> dict | None:
    p = run_dir / DONE_FILE
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except ValueError:
            return None
    return None


def member_to_dict(m: Member) -> dict:
    """A member as JSON, for a worker process (`member_from_dict` gives it back, equal)."""
    d = {f.name: getattr(m, f.name) for f in dataclasses.fields(Member)}
    d["cfg"] = config_lib.to_dict(m.cfg)
    return d


def member_from_dict(d: dict) -> Member:
    return Member(**{**d, "cfg": config_lib.from_dict(d["cfg"])})


def _agree(flag: bool) -> bool:
    """Process 0's answer on every process of a multi-process job: a shared filesystem may
    show files late on the others, and all of them must take the same path."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _is_done(out: Path, name: str, main: bool) -> bool:
    return _agree(_done(out / "runs" / name) is not None if main else False)


_CLAIM_WARNED: list[bool] = []


def _warn_once(msg: str) -> None:
    if not _CLAIM_WARNED:
        _CLAIM_WARNED.append(True)
        print(msg, file=sys.stderr)


@contextlib.contextmanager
def _claim(out: Path, unit: str, main: bool):
    """Hold a unit against every other process on the directory (hosts sharing it included)
    for as long as it trains; yields False when another process holds it. Without flock on
    the filesystem nothing is held (one warning) and the hosts' disjoint shares alone keep
    them apart."""
    with contextlib.ExitStack() as stack:
        got = True
        if main:
            try:
                stack.enter_context(dirlock.hold(out / "claims" / unit, "sweep unit", _warn_once))
            except dirlock.Busy:
                got = False
        yield _agree(got)


def run_unit(members: list[Member], out: Path, *, on_start=None, on_member=None,
             progress: bool = False, data_memo: dict | None = None,
             trained_by: dict | None = None) -> bool:  # fmt: skip
    """Train one unit in this process: a member alone, or a WSD trunk (members[0]) with its
    branches in branch-step order. The trunk is trained up to each branch point in turn (its latest
    checkpoint is then exactly where the branch starts), the branch is trained, and the trunk goes
    on. Members of one size share their compiled programs (lm.training.programs.programs), so a unit
    compiles once. Returns False, training nothing, when another process holds the unit.

    `on_start(member, stop_after)` and `on_member(member, stop_after, rec)` see each member
    (segment) begin and end; rec is None for a member that was already done."""
    import jax

    main = jax.process_index() == 0
    on_start = on_start or (lambda *_: None)
    on_member = on_member or (lambda *_: None)
    data_memo = {} if data_memo is None else data_memo

    def one(m: Member, stop_after: int | None = None) -> None:
        if _is_done(out, m.name, main):
            on_member(m, stop_after, None)
            return
        on_start(m, stop_after)
        rec = train_member(m, out, stop_after, main=main, progress=progress,
                           data_memo=data_memo, trained_by=trained_by)  # fmt: skip
        on_member(m, stop_after, rec)

    trunk, branches = members[0], members[1:]
    with _claim(out, trunk.name, main) as got:
        if not got:
            return False
        for b in branches:
            if not _is_done(out, b.name, main):
                one(trunk, stop_after=b.branch_step)
            one(b)
        one(trunk)
    return True


def train_unit(job: dict, send, where: dict, memo: dict) -> bool:
    """Train one unit in a worker process (lm.scaling.workers.worker_main, which the pool of
    `_run_sweep` starts with this function): `job` is the message `_run_sweep` sent, each
    member's start and end go back through `send`, `memo` keeps the mapped corpus between the
    worker's units. False when another process holds the unit."""
    members = [member_from_dict(d) for d in job["members"]]

    def on_start(m, stop_after) -> None:
        send(ev="start", member=m.name, stop_after=stop_after)

    def on_member(m, stop_after, rec) -> None:
        rec = rec or {}
        send(ev="member", member=m.name, final=stop_after is None, trained=bool(rec),
             timings=rec.get("timings", {}), wall=rec.get("wall", 0.0))  # fmt: skip

    return run_unit(members, Path(job["out"]), on_start=on_start, on_member=on_member,
                    data_memo=memo, trained_by={**job.get("trained_by", {}), **where})  # fmt: skip


def train_member(m: Member, out: Path, stop_after: int | None = None, *, main: bool = True,
                 progress: bool = False, data_memo: dict | None = None,
                 trained_by: dict | None = None) -> dict:  # fmt: skip
    """Train (or resume) one member, to its end or to `stop_after`; at its end, write its
    done.json. Returns {"wall", "timings"} of this call."""
    from lm.training import loop  # lazy: the training stack loads only where a member trains

    run_dir = out / "runs" / m.name
    init_from = (out / "runs" / m.trunk, m.branch_step) if m.trunk else None
    t0 = time.perf_counter()
    summary = loop.train_run(
        m.cfg, run_dir, progress=progress, init_from=init_from, stop_after=stop_after,
        print_fn=lambda *_: None, bar_position=1, data_memo=data_memo,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    rec = {"wall": wall, "timings": summary["timings"]}
    if not main:
        return rec
    # Wall time and its breakdown accumulate over the segments a trunk is trained in, and
    # over resumes.
    acc_file = run_dir / "time.json"
    acc = json.loads(acc_file.read_text()) if acc_file.is_file() else {"wall_s": 0.0}
    acc["wall_s"] += wall
    for k, v in summary["timings"].items():
        acc[k] = acc.get(k, 0.0) + v
    atomic_write(acc_file, json.dumps(acc))
    if stop_after is None:
        record = {
            "name": m.name,
            "val_loss": summary["val_loss"],
            "val_loss_se": summary["val_loss_se"],
            "val_bpb": summary["val_bpb"],
            "wall_s": acc["wall_s"],
            "timings": {k: v for k, v in acc.items() if k != "wall_s"},
            # which host, process, cores and devices trained it (the last segment's)
            "trained_by": trained_by or {},
        }
        atomic_write(run_dir / DONE_FILE, json.dumps(record, indent=1))
    return rec


def _latest_step(path: Path) -> int | None:
    """The last step a run's metrics.jsonl has logged, from its tail."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


class _Progress:
    """The sweep's progress bar and this invocation's accounting, fed by the members' events,
    from this process or from its workers. The bar counts FLOPs: a member's whole work when it
    ends, and meanwhile (workers) the steps its metrics show it has trained."""

    def __init__(self, bar, work: dict[str, float], out: Path, members: dict[str, Member],
                 stamp) -> None:  # fmt: skip
        self.bar, self.work, self.out, self.members, self.stamp = bar, work, out, members, stamp
        self.finished = 0.0
        self.partial: dict[str, float] = {}
        self.first: dict[str, int] = {}
        self.running: dict[int, str] = {}
        self.timings: dict[str, float] = {}
        self.skipped = self.trained = 0

    def start(self, worker: int, name: str) -> None:
        self.running[worker] = name
        if name not in self.first:
            m = self.members[name]
            got = _latest_step(self.out / "runs" / name / "metrics.jsonl")
            self.first[name] = got if got is not None else (m.branch_step or 0)
        self._show()

    def member(self, worker: int, name: str, final: bool, trained: bool, timings: dict) -> None:
        for k, v in timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        if self.running.get(worker) == name:
            del self.running[worker]
        if final:
            self.partial.pop(name, None)
            self.finished += self.work[name]
            if trained:
                self.trained += 1
            else:
                self.skipped += 1
            if trained:
                self.stamp()
        self._show()

    def tick(self) -> None:
        for name in self.running.values():
            m = self.members[name]
            step = _latest_step(self.out / "runs" / name / "metrics.jsonl")
            if step is not None:
                per_step = self.work[name] / max(1, m.cfg.train.steps - (m.branch_step or 0))
                self.partial[name] = min(self.work[name], (step - self.first[name]) * per_step)
        self._show()

    def _show(self) -> None:
        self.bar.n = (self.finished + sum(self.partial.values())) / 1e12
        if self.running:
            self.bar.set_postfix_str(", ".join(self.running[w] for w in sorted(self.running)),
                                     refresh=False)  # fmt: skip
        self.bar.refresh()


def run_sweep(sweep: SweepConfig, out: str | Path, progress: bool = True, print_fn=print,
              workers: int | str = 1, share: workers_lib.Share | None = None) -> dict:  # fmt: skip
    """Train every member of the sweep not yet done, then write results.csv and curves.csv.

    `workers`: members trained side by side on this machine, each in a worker process on its
    own slice (lm.scaling.workers); 1 trains them one after another in this process, "auto"
    decides from the machine and the sweep. `share`: this host's index among hosts that run
    the same sweep on one shared directory, each training its own share of the units.

    Multi-process JAX (jax.distributed): every process trains every member (each holds its
    shards), process 0 alone writes the sweep's files, and which members are done is process
    0's answer, so all processes take the same path even where a shared filesystem shows files
    late."""
    import jax

    share = share or workers_lib.Share()
    if jax.distributed.is_initialized():
        if workers not in (1, "auto"):
            raise ConfigError(
                f"--workers {workers}: a jax.distributed job trains each member on every "
                "process's devices; use --workers 1, or --worker-index/--num-workers without "
                "--distributed to split a sweep between hosts"
            )
        workers = 1
    # In-process training asks JAX which process this is; a process that only coordinates
    # workers must not start a backend (on a GPU it would take the workers' memory).
    main = jax.process_index() == 0 if workers == 1 else True
    if not main:
        print_fn, progress = (lambda *_: None), False
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # One sweep per directory: process 0 holds the lock for all of this sweep's processes,
    # which share the directory by design (each member also locks its own run directory).
    # Hosts that split a sweep each hold only their index; units are claimed one by one.
    if not main:
        held = contextlib.nullcontext()
    elif share.count == 1:
        held = dirlock.hold(out, "sweep directory", print_fn)
    else:
        held = dirlock.hold(out / "claims" / f"share-{share.index}-of-{share.count}",
                            f"sweep share {share.index} of {share.count}", print_fn)  # fmt: skip
    with held:
        return _run_sweep(sweep, out, progress, print_fn, main, workers, share)


def precision_line(base: dict, machine: workers_lib.Machine | None) -> str:
    """What the members multiply in, said once. Each member decides (lm.hardware.precision) and
    records it in its config.yaml; this process asks no collective, and when workers train
    (`machine` probed), starts no JAX backend: the rule then reads the probed platform and CPU
    flags."""
    model = config_lib.from_dict(base).model
    if model.compute_dtype != "auto":
        return precision.describe(model, f"model.compute_dtype={model.compute_dtype}")
    if machine is None:
        choice = precision.auto()
    else:
        override = os.environ.get(precision.ENV) or None
        choice = precision.decide(machine.platform, cpu_features(), override)
    model = dataclasses.replace(model, compute_dtype=choice.dtype)
    return precision.describe(model, f"model.compute_dtype=auto: {choice.why}")


def _run_sweep(sweep: SweepConfig, out: Path, progress: bool, print_fn, main: bool,
               workers: int | str, share: workers_lib.Share) -> dict:  # fmt: skip
    lr_members = plan_lr(sweep)
    # The rate does not change a member's name, shape, tokens or FLOPs: Kaplan's stands in
    # until the LR sweep has fitted its rule.
    main_members = plan(sweep)
    members = lr_members + main_members
    work = _work(members)
    # Each stage's units (the LR sweep, then the rest), this host's share of them, longest
    # first: names and FLOPs do not depend on the rate, so every host plans the same shares.
    # The holdout stage, if any, is planned from the main results once they are all in.
    stages = [workers_lib.partition(workers_lib.make_units(ms, work), share.count)[share.index]
              for ms in (lr_members, main_members)]  # fmt: skip
    mine = {n for units in stages for u in units for n in u.members}
    if main:
        for line in design_lines(sweep, members):
            print_fn(line)
    if share.count > 1:
        print_fn(
            f"worker {share.index} of {share.count} ({share.source}): "
            f"{sum(len(s) for s in stages)} units, {len(mine)} of {len(members)} members, "
            f"{sum(work[n] for n in mine) / sum(work.values()):.0%} of the sweep's FLOPs"
        )
    n_workers, slices, machine = _choose_workers(workers, stages, members, work, out, print_fn)
    if main:  # after every check of the flags: a refused command writes nothing
        print_fn(precision_line(sweep.base, machine))
        atomic_write(out / "sweep.json", json.dumps(dataclasses.asdict(sweep), indent=1))
    # Only a process that trains in itself may ask JAX how many processes there are.
    multi = workers == 1 and _process_count() > 1
    agree = _agree if multi else (lambda flag: flag)

    t_start = time.perf_counter()
    stamp = _stamper(out, main, n_workers, share)
    stamp()
    bar = _progress_bar(sweep.name, sum(work[n] for n in mine), progress)
    by_name = {m.name: m for m in members}
    track = _Progress(bar, work, out, by_name, stamp)
    trained_by = {"host": socket.gethostname(), "share": [share.index, share.count]}
    pool = None
    data_memo: dict = {}  # the corpus, mapped once for every member trained in this process
    rule = None  # Kaplan's rate, unless the LR sweep fits one
    try:
        pool = _start_pool(slices, out, share, print_fn)

        def train(units: list[workers_lib.Unit]) -> None:
            if pool is None:
                _train_here(units, by_name, out, track, trained_by, data_memo, progress)
            else:
                _train_in_pool(pool, units, by_name, out, track, trained_by, progress)

        for k, units in enumerate(stages):
            if k == 1 and lr_members:
                # The rule needs every LR member, those of other hosts' shares included.
                _wait_for([m.name for m in lr_members], out, main, agree, print_fn, "LR")
                rule = _share_rule(sweep, lr_members, out, main, multi)
                members = lr_members + plan(sweep, rule)
                by_name.update({m.name: m for m in members})
            train(units)
        if sweep.holdout_budget_factor:
            hold, units = _holdout_stage(sweep, members, rule, out, main, multi, agree, share,
                                         work, print_fn)  # fmt: skip
            members = members + hold
            by_name.update({m.name: m for m in hold})
            mine |= {n for u in units for n in u.members}
            bar.total += sum(work[n] for u in units for n in u.members) / 1e12
            train(units)
    finally:
        if pool is not None:
            pool.close()
        bar.close()
    stamp()
    return _wrap_up(sweep, members, by_name, out, main, share, len(mine), n_workers, track,
                    t_start, print_fn)  # fmt: skip


def _work(members: list[Member]) -> dict[str, float]:
    """Each member's training FLOPs (hardware count) in this sweep: its own steps, a branch's
    from its branch point."""
    return {m.name: (m.cfg.train.steps - (m.branch_step or 0)) * flops.flops_per_token(
        m.cfg.model, m.cfg.train.seq_len)["hardware"] * m.cfg.train.batch_size
        * m.cfg.train.seq_len for m in members}  # fmt: skip


def _start_pool(slices: list[workers_lib.Slice], out: Path, share: workers_lib.Share,
                print_fn) -> workers_lib.Pool | None:  # fmt: skip
    """The worker processes that train side by side, or None to train in this process."""
    if not slices:
        return None
    print_fn(
        f"{len(slices)} workers: "
        + "; ".join(f"cores {','.join(map(str, s.cpus)) or 'all'}, "
                    f"{len(s.devices)} {s.platform} device(s)" for s in slices)
    )  # fmt: skip
    return workers_lib.Pool(slices, out / "logs", f"-{share.index}",
                            trainer="lm.scaling.sweep:train_unit")  # fmt: skip


def _holdout_stage(sweep: SweepConfig, members: list[Member], rule: LRRule | None, out: Path,
                   main: bool, multi: bool, agree, share: workers_lib.Share, work: dict,
                   print_fn) -> tuple[list[Member], list[workers_lib.Unit]]:  # fmt: skip
    """The out-of-sample stage: wait for every main member (other hosts' shares too), plan
    the holdout members from holdout.json, add their FLOPs to `work`; returns them and this
    host's share of their units."""
    main_members = [m for m in members if m.group == "main"]
    _wait_for([m.name for m in main_members], out, main, agree, print_fn, "main")
    doc, hold = _share_holdout(sweep, main_members, out, main, rule, multi)
    if doc is not None:
        print_fn(holdout_line(doc))
    work.update(_work(hold))
    units = workers_lib.partition(workers_lib.make_units(hold, work), share.count)[share.index]
    return hold, units


def holdout_line(doc: dict) -> str:
    """What holdout.json says, in one line."""
    if "N_opt" not in doc:
        return f"holdout: no runs planned: {doc.get('error', 'no prediction')}"
    sizes = ", ".join(f"N {m['N']:,} D {m['D']:,}" for m in doc.get("members", []))
    return (
        f"holdout: approach 2 on {doc['n_rows']} main runs (a = {doc['a']:.3f}, "
        f"{doc['n_budgets']} budgets) predicts N_opt = {doc['N_opt']:.4g} at C_out = "
        f"{doc['factor']:g} x {doc['C_max']:.3g} = {doc['C_out']:.3g}; runs at N_opt/2, N_opt, "
        f"2 N_opt: {sizes}"
    )


def _choose_workers(
    workers: int | str,
    stages: list[list[workers_lib.Unit]],
    members: list[Member],
    work: dict[str, float],
    out: Path,
    print_fn,
) -> tuple[int, list[workers_lib.Slice], workers_lib.Machine | None]:
    """How many workers train side by side, on which slices of the machine; and the machine,
    probed (None when `workers` is 1: this process trains, and probes nothing)."""
    if workers == 1:
        return 1, [], None

    def left(units) -> list[float]:
        todo = [sum(work[n] for n in u.members if _done(out / "runs" / n) is None) for u in units]
        return [c for c in todo if c > 0]

    machine = workers_lib.probe_machine()
    if workers == "auto":
        n_workers, why = workers_lib.auto_workers(machine, [left(s) for s in stages], members)
        print_fn(f"workers: {n_workers} ({why})")
    else:
        n_workers = int(workers)
    slices = []
    if n_workers > 1:
        slices = workers_lib.plan_slices(machine, n_workers, members, f"--workers {workers}")
    return n_workers, slices, machine


def _stamper(out: Path, main: bool, n_workers: int, share: workers_lib.Share):
    """stamp(): record this invocation (host, start, now, workers, share) in invocations/, so
    time_breakdown can add up the wall time of every invocation and host."""
    host = socket.gethostname()
    t_wall = time.time()
    inv_dir = out / "invocations"
    inv_file = inv_dir / f"{host}-{os.getpid()}-{int(t_wall)}.json"

    def stamp() -> None:
        if main:
            inv_dir.mkdir(exist_ok=True)
            atomic_write(inv_file, json.dumps({
                "host": host, "start": t_wall, "end": time.time(), "workers": n_workers,
                "share": [share.index, share.count]}))  # fmt: skip

    return stamp


def _progress_bar(name: str, flops_total: float, progress: bool):
    """The sweep's bar, in TFLOPs of this host's share."""
    from tqdm import tqdm

    return tqdm(
        total=flops_total / 1e12, unit="TFLOP", desc=f"sweep {name}",
        disable=not progress, position=0, dynamic_ncols=True, bar_format=(
            "{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} TFLOP "
            "[{elapsed}<{remaining}] {postfix}"
        ),
    )  # fmt: skip


def _train_here(
    units: list[workers_lib.Unit],
    by_name: dict[str, Member],
    out: Path,
    track: _Progress,
    trained_by: dict,
    data_memo: dict,
    progress: bool,
) -> None:
    """Train the units in this process, one after another."""
    import jax

    trained_by.update(pid=os.getpid(), cpus=sorted(os.sched_getaffinity(0)),
                      devices=jax.local_device_count())  # fmt: skip
    for u in units:
        run_unit(
            [by_name[n] for n in u.members], out, progress=progress,
            data_memo=data_memo, trained_by=trained_by,
            on_start=lambda m, _s: track.start(0, m.name),
            on_member=lambda m, s, rec: track.member(
                0, m.name, s is None, rec is not None, (rec or {}).get("timings", {})),
        )  # fmt: skip


def _train_in_pool(pool: workers_lib.Pool, units: list[workers_lib.Unit],
                   by_name: dict[str, Member], out: Path, track: _Progress, trained_by: dict,
                   progress: bool) -> None:  # fmt: skip
    """Train the units on the pool's workers, side by side."""

    def job(u: workers_lib.Unit) -> dict:
        return {"name": u.name, "out": str(out), "trained_by": trained_by,
                "members": [member_to_dict(by_name[n]) for n in u.members]}  # fmt: skip

    def on_event(w: int, ev: dict) -> None:
        if ev["ev"] == "start":
            track.start(w, ev["member"])
        elif ev["ev"] == "member":
            track.member(w, ev["member"], ev["final"], ev["trained"], ev["timings"])

    pool.run(units, job, on_event, tick=track.tick if progress else None)


def _wrap_up(sweep: SweepConfig, members: list[Member], by_name: dict[str, Member], out: Path,
             main: bool, share: workers_lib.Share, n_mine: int, n_workers: int, track: _Progress,
             t_start: float, print_fn) -> dict:  # fmt: skip
    """results.csv and curves.csv (process 0), the closing line, and run_sweep's numbers."""
    rows = results_rows(sweep, members, out)
    n_done = len(rows) if main else 0
    if main:
        write_csv(out / "results.csv", rows)
        write_csv(out / "curves.csv", curve_rows(members, out))
    total = time.perf_counter() - t_start
    run_wall = sum(r["wall_s"] for r in rows)
    whose = (f"worker {share.index} of {share.count}: {n_mine} members of its share "
             if share.count > 1 else f"{len(members)} members ")  # fmt: skip
    print_fn(
        f"{whose}({track.skipped} already done); {n_done} of {len(members)} done in all -> "
        f"{out / 'results.csv'}; this invocation {total:.0f} s"
    )
    return {"rows": rows, "members": by_name, "timings": track.timings, "wall_s": total,
            "run_wall_s": run_wall, "complete": n_done == len(members), "n_done": n_done,
            "main": main, "workers": n_workers}  # fmt: skip


def _process_count() -> int:
    import jax

    return jax.process_count()


def _wait_for(names: list[str], out: Path, main: bool, agree, print_fn, what: str) -> None:
    """Wait until every member in `names` is done, wherever it trains (another host's share,
    or a unit another process holds); a host that dies is rerun by its cluster."""
    waited, said = 0.0, None
    while True:
        missing = [n for n in names if _done(out / "runs" / n) is None] if main else []
        if agree(not missing):
            return
        if said is None or waited - said >= 600:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            print_fn(
                f"waiting for {len(missing)} {what} member(s) trained elsewhere (another "
                f"--worker-index, or another process on this directory): "
                f"{', '.join(missing[:3])}{more}"
            )
            said = waited
        waited += workers_lib.sleep_backoff(waited)


def _share_rule(sweep: SweepConfig, lr_members: list[Member], out: Path, main: bool,
                multi: bool = False) -> LRRule:  # fmt: skip
    """Fit the rule from the LR runs' records and write lr.json. Every host fits it from the
    same records, so all plan the same members; within a multi-process job, every process
    takes process 0's numbers."""
    import numpy as np

    kp = np.zeros(2, np.float64)
    if main:
        doc = fit_lr_rule(_lr_points(sweep, lr_members, out))
        doc["tokens_per_param"] = sweep.lr_sweep_tokens_per_param
        doc["convention"] = sweep.flops_convention
        doc["seeds"] = sweep.lr_sweep_seeds
        if sweep.transfers_lr:
            doc["transfer"] = {"parametrization": "mup", "base_width": proxy_width(sweep)}
        atomic_write(out / "lr.json", json.dumps(doc, indent=1))
        kp[:] = doc["rule"]["k"], doc["rule"]["p"]
    if multi:
        from jax.experimental import multihost_utils

        kp = np.asarray(multihost_utils.broadcast_one_to_all(kp))
    return LRRule(float(kp[0]), float(kp[1]))


# ---------------------------------------------------------------- the design check


def design_check(sweep: SweepConfig, members: list[Member]) -> list[dict]:
    """Can this design bracket the optimum? Per IsoFLOP budget: the sizes it trains, and how many
    lie on each side of the optimum expected at D/N = expected_tokens_per_param (N as the
    convention counts it). A budget passes with >= min_sizes_per_budget sizes and
    >= min_sizes_each_side on each side. A grid has no budgets of its own: it fails, since its
    approach 2 could only interpolate across runs."""
    if sweep.kind != "isoflop":
        why = "a grid sweep has no IsoFLOP budgets: approach 2 would interpolate"
        return [{"budget": None, "pass": False, "n_sizes": 0, "below": 0, "above": 0,
                 "detail": why}]  # fmt: skip
    out = []
    for c in sweep.budgets:
        ms = [m for m in members if m.group == "main" and m.budget == c]
        ratios = [m.D / params_for(m.cfg.model, sweep.flops_convention) for m in ms]
        # More tokens per parameter than expected: the model is smaller than the optimum.
        below = sum(r > sweep.expected_tokens_per_param for r in ratios)
        above = len(ratios) - below
        ok = (len(ms) >= sweep.min_sizes_per_budget and below >= sweep.min_sizes_each_side
              and above >= sweep.min_sizes_each_side)  # fmt: skip
        span = max(ratios) / min(ratios) if ratios else 0.0
        out.append({"budget": c, "pass": ok, "n_sizes": len(ms), "below": below, "above": above,
                    "detail": f"{len(ms)} sizes, {below} below and {above} above the expected "
                    f"optimum (D/N = {sweep.expected_tokens_per_param:g}); D/N spans "
                    f"{min(ratios, default=0):.3g}-{max(ratios, default=0):.3g} "
                    f"({span:.3g}x)"})  # fmt: skip
    return out


def design_lines(sweep: SweepConfig, members: list[Member]) -> list[str]:
    rows = design_check(sweep, members)
    lines = []
    for r in rows:
        where = f"C={r['budget']:.3g}" if r["budget"] is not None else "design"
        lines.append(f"design {'PASS' if r['pass'] else 'FAIL'} {where}: {r['detail']}")
    bad = sum(not r["pass"] for r in rows)
    need = (f">= {sweep.min_sizes_per_budget} sizes per budget with >= "
            f"{sweep.min_sizes_each_side} on each side")  # fmt: skip
    lines.append(
        f"design: every budget can bracket the expected optimum ({need})"
        if not bad
        else f"design: {bad} of {len(rows)} budget(s) cannot bracket the expected optimum ({need})"
    )
    return lines


def results_rows(sweep: SweepConfig, members: list[Member], out: Path) -> list[dict]:
    rows = []
    for m in members:
        rec = _done(out / "runs" / m.name)
        if rec is None:
            continue
        c = compute(m)
        t = m.cfg.train
        rows.append(
            {
                "name": m.name,
                "group": m.group,
                "N": m.N,
                "N_total": m.N_total,
                "N_out": params_for(m.cfg.model, "6N_out"),
                "D": m.D,
                "C": c[f"C_{sweep.flops_convention}"],
                **c,
                "loss": rec["val_loss"],
                "loss_se": rec["val_loss_se"],
                "bpb": rec["val_bpb"],
                "wall_s": rec["wall_s"],
                "budget": m.budget if m.budget is not None else "",
                "n_layers": m.cfg.model.n_layers,
                "d_model": m.cfg.model.d_model,
                "n_heads": m.cfg.model.n_heads,
                "lr": t.lr,
                "warmup_steps": t.warmup_steps,
                "steps": t.steps,
                "seed": t.seed,
                "schedule": t.schedule,
                "branch_of": m.trunk or "",
                "branch_step": m.branch_step or "",
            }
        )
    return rows


def curve_rows(members: list[Member], out: Path) -> list[dict]:
    """Every logged training loss of every main member: the curves approach 1 envelopes."""
    rows = []
    for m in members:
        if m.group != "main":
            continue
        path = out / "runs" / m.name / "metrics.jsonl"
        if not path.is_file():
            continue
        fpt = flops.flops_per_token(m.cfg.model, m.cfg.train.seq_len)
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "train_loss" in rec and rec["tokens"] > 0:
                d = rec["tokens"]
                rows.append({"name": m.name, "N": m.N, "N_total": m.N_total, "D": d,
                             "C": fpt["6N"] * d, "loss": rec["train_loss"]})  # fmt: skip
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------- command line


def print_plan(sweep: SweepConfig, print_fn=print, peak: float | None = None) -> list[Member]:
    members = plan_lr(sweep) + plan(sweep)
    base = config_lib.from_dict(sweep.base)
    peak = peak or base.train.peak_flops  # the target machine's, when the sweep file says
    if peak is None:
        dtype = precision.compute_dtype(base.model)  # bf16 members: the bf16-operand peak
        peak = peak_flops(base.data.cache_dir, precision=precision_of(dtype))
    rate = peak * sweep.mfu_estimate
    print_fn(
        f"{'member':<28} {'group':<6} {'L':>3} {'d':>5} {'N':>10} {'D':>12} {'steps':>6} "
        f"{'C_' + sweep.flops_convention:>10} {'lr':>8} {'est_s':>7}"
    )
    total_s = total_c = 0.0
    for m in members:
        c = compute(m)
        run_steps = m.cfg.train.steps - (m.branch_step or 0)
        est = c["C_hardware"] * run_steps / m.cfg.train.steps / rate
        total_s += est
        total_c += c["C_hardware"] * run_steps / m.cfg.train.steps
        branch = f"  <- {m.trunk} @ {m.branch_step}" if m.trunk else ""
        lr = "rule" if sweep.lr_sweep_sizes and m.group != "lr" else f"{m.cfg.train.lr:.3g}"
        print_fn(
            f"{m.name:<28} {m.group:<6} {m.cfg.model.n_layers:>3} {m.cfg.model.d_model:>5} "
            f"{m.N:>10,} {m.D:>12,} {m.cfg.train.steps:>6} "
            f"{c['C_' + sweep.flops_convention]:>10.3g} {lr:>8} {est:>7.0f}{branch}"
        )
    cs = [compute(m)["C_" + sweep.flops_convention] for m in members if m.group == "main"]
    if sweep.lr_sweep_sizes and sweep.transfers_lr:
        print_fn(
            f"lr: muP, one base rate tuned at N = {sweep.lr_sweep_sizes[0]:g} (d_model "
            f"{proxy_width(sweep)}, the base width) over {len(sweep.lr_sweep_lrs)} rates x "
            f"{sweep.lr_sweep_seeds} seeds at D/N = {sweep.lr_sweep_tokens_per_param:g}; every "
            "main member uses it ('rule' above)"
        )
    elif sweep.lr_sweep_sizes:
        print_fn(
            f"lr: {len(sweep.lr_sweep_sizes)} sizes x {len(sweep.lr_sweep_lrs)} rates at "
            f"D/N = {sweep.lr_sweep_tokens_per_param:g}; the main members' rate comes from the "
            "rule lr(N) = k N^p fitted to them ('rule' above)"
        )
    if sweep.holdout_budget_factor:
        print_fn(_holdout_estimate(sweep, members, rate))
    for line in design_lines(sweep, members):
        print_fn(line)
    print_fn(
        f"{len(members)} members; compute spans {math.log10(max(cs) / min(cs)):.2f} decades; "
        f"{total_c:.3e} FLOPs to train (hardware count); estimated {total_s / 60:.1f} min at "
        f"{sweep.mfu_estimate:.0%} of {peak / 1e9:.0f} GFLOP/s"
    )
    return members


def _holdout_estimate(sweep: SweepConfig, members: list[Member], rate: float) -> str:
    """The holdout stage's cost, before its sizes are known: three runs of C_out each, in
    hardware FLOPs at the ratio the largest budget's members have to the sweep's count."""
    c_max = max(sweep.budgets)
    c_out = sweep.holdout_budget_factor * c_max
    conv = f"C_{sweep.flops_convention}"
    ratios = sorted(compute(m)["C_hardware"] / compute(m)[conv] for m in members
                    if m.group == "main" and m.budget == c_max) or [1.0]  # fmt: skip
    hw = len(HOLDOUT_SIZES) * c_out * ratios[len(ratios) // 2]
    return (
        f"holdout: then {len(HOLDOUT_SIZES)} whole runs at C_out = "
        f"{sweep.holdout_budget_factor:g} x {c_max:.3g} = {c_out:.3g} ({conv}), around approach "
        f"2's N_opt from the main runs: about {hw:.3e} FLOPs (hardware), estimated "
        f"{hw / rate / 60:.1f} min more, not in the totals below"
    )


def time_breakdown(out: Path, members: dict, report_s: float) -> str:
    """Where the whole sweep's time went, over every invocation (and host) that trained it:
    the wall time during which any of them ran, the members' own time (more than the wall time
    when members trained side by side), and what that time was spent on."""
    tm: dict[str, float] = {}
    for name in members:
        rec = _done(out / "runs" / name) or {}
        tm["wall_s"] = tm.get("wall_s", 0.0) + rec.get("wall_s", 0.0)
        for k, v in rec.get("timings", {}).items():
            tm[k] = tm.get(k, 0.0) + v
    member_s = tm.get("wall_s", 0.0)
    runs = []
    for p in sorted((out / "invocations").glob("*.json")):
        try:
            runs.append(json.loads(p.read_text()))
        except ValueError:
            continue
    # Sweeps from before invocations were recorded: their members ran one at a time.
    sweep_s = workers_lib.wall_union((r["start"], r["end"]) for r in runs) if runs else member_s
    most = max((r.get("workers", 1) for r in runs), default=1)
    hosts = len({tuple(r.get("share", (0, 1))) for r in runs}) if runs else 1
    wall = sweep_s + report_s
    train_s = tm.get("train", 0.0)
    named = ("compile", "eval", "checkpoint", "setup")
    rest = member_s - train_s - sum(tm.get(k, 0.0) for k in named)
    side = f"up to {most} worker(s) side by side" + (f", {hosts} hosts" if hosts > 1 else "")
    return (
        f"time: {wall:.0f} s in all: training {sweep_s:.0f} s of wall time over {len(runs) or 1} "
        f"invocation(s) ({side}), fits+plots {report_s:.0f} s. Member time "
        f"{member_s:.0f} s ({member_s / max(sweep_s, 1e-9):.2f}x the training wall time): "
        f"train steps {train_s:.0f} s ({train_s / max(member_s, 1e-9):.0%}), everything else "
        f"{member_s - train_s:.0f} s ({(member_s - train_s) / max(member_s, 1e-9):.0%}): "
        + ", ".join(f"{k} {tm.get(k, 0.0):.0f} s" for k in named)
        + f", other (data, state init, restores) {rest:.0f} s"
    )
