"""Synthetic sweep directories for the report's tests: results.csv, curves.csv and sweep.json
as `lm sweep run` writes them, for model shapes with real parameter and FLOP counts
(lm.model.flops), and losses from KNOWN Chinchilla-form constants in the non-embedding convention,
L = E + A/N^alpha + B/D^beta, times small multiplicative noise. Nothing is trained.

Independent of lm.scaling.sweep's planner on purpose: the designs here are chosen to make a
check pass or fail, and must not move when the planner's rules change.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lm.config import ModelConfig
from lm.model import flops

TRUE = {"E": 1.2, "A": 60.0, "B": 50.0, "alpha": 0.34, "beta": 0.28}
A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
NOISE = 0.002  # relative, per run
SEED_NOISE = 0.004  # the seed runs' extra spread
COSINE_PENALTY = 0.01  # cosine runs end this much (relative) above WSD, as in Hägele et al.
VOCAB, SEQ, BATCH = 259, 64, 32
CURVE_POINTS = 60  # logged training losses per member
# Every curve starts at the same token count, as a real run's first logged step does, so each
# size's curve covers low compute too (otherwise the first points of big models' long curves
# would make the envelope there).
CURVE_FIRST_D = 2e4


def true_loss(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def true_n_opt(C):
    """Hoffmann et al. 2022 eq. 4 under C = 6ND for the TRUE constants."""
    a, b = TRUE["alpha"], TRUE["beta"]
    G = (a * TRUE["A"] / (b * TRUE["B"])) ** (1 / (a + b))
    return G * (np.asarray(C) / 6) ** A_TRUE


def model(n_target: float) -> ModelConfig:
    """A GPT shape with ~n_target non-embedding parameters (N ~ 12 L d^2, d ~ 32 L)."""
    L = max(2, round((n_target / (12 * 32**2)) ** (1 / 3)))
    heads = max(1, round(math.sqrt(n_target / (12 * L)) / 16))
    return ModelConfig(
        n_layers=L, d_model=16 * heads, n_heads=heads, vocab_size=VOCAB, max_seq_len=SEQ
    )


class _Shape:
    """One model size: its config, parameter counts and FLOPs per token."""

    def __init__(self, cfg: ModelConfig, flops_convention: str):
        self.cfg, self.conv = cfg, flops_convention
        self.counts = flops.count_params(cfg)
        self.fpt = flops.flops_per_token(cfg, SEQ)
        self.N = self.counts["non_embedding"]

    def row(self, name, group, D, C, loss, seed=0, schedule="wsd", branch_of="") -> dict:
        """A results.csv row, with the columns `lm sweep run` writes."""
        cfg = self.cfg
        return {
            "name": name, "group": group, "N": self.N, "N_total": self.counts["total"],
            "N_out": self.counts["non_embedding_out"], "D": D, "C": self.fpt[self.conv] * D,
            **{f"C_{k}": v * D for k, v in self.fpt.items()}, "loss": loss, "loss_se": 0.003,
            "bpb": loss / math.log(2), "wall_s": 1.0, "budget": C or "",
            "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
            "lr": 1e-3, "warmup_steps": 10, "steps": D // (BATCH * SEQ), "seed": seed,
            "schedule": schedule, "branch_of": branch_of, "branch_step": "",
        }  # fmt: skip


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def ladder(lo: float = 1e4, hi: float = 4e6, step: float = 2.0) -> list[float]:
    return [lo * step**k for k in range(int(math.log(hi / lo, step)) + 1)]


def write_sweep(
    out: Path,
    *,
    kind: str = "isoflop",
    flops_convention: str = "6N",
    budgets: tuple[float, ...] = (1e11, 3e11, 1e12, 3e12, 1e13),
    span: float = 6.0,
    step: float = 2.0,
    sizes: list[float] | None = None,
    tokens: tuple[float, ...] = (),
    loss_fn: Callable = true_loss,
    curve_fn: Callable | None = None,
    noise: float = NOISE,
    seeds: int = 3,
    cosine: bool = True,
    seed: int = 0,
    name: str = "synthetic",
) -> list[dict]:
    """Write the directory; returns the main rows.

    isoflop: per budget (counted with flops_convention), every size of `sizes`, or of a ladder
    of sizes a factor `step` apart within a factor `span` of the true N_opt; D = C / FLOPs per
    token.
    grid: every size of `sizes` at every D of `tokens`. curve_fn (default loss_fn) gives the
    training curves, each checkpoint as if it were a finished run (approach 1's idealisation)."""
    rng = np.random.default_rng(seed)
    curve_fn = curve_fn or loss_fn
    points: list[tuple[float, float, float | None]] = []  # (n_target, D, budget)
    if kind == "grid":
        points = [(n, float(d), None) for n in sizes for d in tokens]
    else:
        for C in budgets:
            for n in sizes or ladder(step=step):
                cfg = model(n)
                N = flops.count_params(cfg)["non_embedding"]
                if sizes is None and not 1 / span <= N / true_n_opt(C) <= span:
                    continue
                fpt = flops.flops_per_token(cfg, SEQ)[flops_convention]
                points.append((n, round(C / fpt / (BATCH * SEQ)) * BATCH * SEQ, C))
    rows, curves = [], []
    by_size: dict[float, list] = {}
    for n, D, C in points:
        by_size.setdefault(n, []).append((D, C))
    smallest = min(by_size)
    for n, pts in by_size.items():
        m = _Shape(model(n), flops_convention)
        trunk_D = max(D for D, _ in pts)
        trunk = f"N{n:.3g}-D{trunk_D:.3g}"
        for D, C in sorted(pts, key=lambda p: -p[0]):
            member = f"N{n:.3g}-D{D:.3g}"
            loss = loss_fn(m.N, D) * math.exp(rng.normal(0, noise))
            rows.append(m.row(member, "main", D, C, loss, branch_of="" if D == trunk_D else trunk))
            for d in np.geomspace(min(CURVE_FIRST_D, D), D, CURVE_POINTS):
                cl = curve_fn(m.N, d) * math.exp(rng.normal(0, 3 * noise))
                curves.append({"name": member, "N": m.N, "N_total": m.counts["total"],
                               "D": int(d), "C": 6 * m.N * int(d), "loss": cl})  # fmt: skip
            if n == smallest and cosine and D != trunk_D:
                rows.append(m.row(f"{member}-cosine", "cosine", D, None,
                                  loss * (1 + COSINE_PENALTY), schedule="cosine"))  # fmt: skip
        if n == smallest:
            base = next(r for r in rows if r["name"] == trunk)
            for s in range(1, seeds):
                loss = base["loss"] * math.exp(rng.normal(0, SEED_NOISE))
                rows.append(m.row(f"{trunk}-seed{s}", "seed", trunk_D, None, loss, seed=s))
    out.mkdir(parents=True, exist_ok=True)
    info = {"name": name, "kind": kind, "flops_convention": flops_convention}
    (out / "sweep.json").write_text(json.dumps(info))
    _write_csv(out / "results.csv", rows)
    _write_csv(out / "curves.csv", curves)
    return [r for r in rows if r["group"] == "main"]


def add_holdout(
    out: Path,
    c_out: float,
    *,
    flops_convention: str = "6N",
    n_opt: float | None = None,
    factor: float = 1.0,
    loss_fn: Callable = true_loss,
) -> list[dict]:
    """Append three holdout rows (group "holdout", as a sweep's holdout_budget_factor trains
    them) to DIR/results.csv: sizes n_opt/2, n_opt, 2 n_opt (default: the true N_opt at c_out),
    D = c_out / FLOPs per token, loss = loss_fn(N, D) x factor, no noise. Returns them."""
    n_opt = n_opt or float(true_n_opt(c_out))
    rows = []
    for f in (0.5, 1.0, 2.0):
        m = _Shape(model(f * n_opt), flops_convention)
        D = round(c_out / m.fpt[flops_convention] / (BATCH * SEQ)) * BATCH * SEQ
        name = f"holdout-N{m.N:.3g}-D{D:.3g}"
        rows.append(m.row(name, "holdout", D, c_out, loss_fn(m.N, D) * factor))
    with (out / "results.csv").open(newline="") as fh:
        old = list(csv.DictReader(fh))
    _write_csv(out / "results.csv", old + rows)
    return rows


def write_lr(out: Path, sizes=(2e4, 8e4, 3.2e5), k: float = 0.05, p: float = -0.3) -> dict:
    """A fabricated DIR/lr.json: per size a loss that is a parabola in log lr around
    k N^p, at five rates a factor 2 apart."""
    points, per_size = [], []
    for n in sizes:
        opt = k * n**p
        for f in (0.25, 0.5, 1.0, 2.0, 4.0):
            loss = true_loss(n, 1e7) + 0.02 * math.log(f) ** 2
            points.append({"N": n, "lr": opt * f, "loss": loss, "loss_se": 0.002})
        per_size.append({"N": n, "lr_opt": opt, "note": "parabola in log lr, 5 rates"})
    doc = {
        "method": "grid of 5 rates a factor 2 apart per size; parabola in log lr",
        "points": points,
        "per_size": per_size,
        "rule": {"formula": "lr(N) = k * N^p", "k": k, "p": p},
        "tokens": 2_000_000,
    }
    (out / "lr.json").write_text(json.dumps(doc))
    return doc


def write_tiny(path: Path) -> Path:
    """A degenerate sweep directory: four runs, loss *rising* with N; no curves, no seeds, no
    sweep.json, no N_out or C_6N_out_attn column (a results.csv from before the third
    convention)."""
    rows = []
    for n, nt, out in ((1e4, 2e4, 1.5e4), (4e4, 6e4, 5e4)):
        for d in (1e5, 4e5):
            rows.append({"name": f"N{n:g}-D{d:g}", "group": "main", "N": n, "N_total": nt,
                         "D": d, "C_6N": 6 * n * d, "C_6N_attn": 6.5 * n * d,
                         "C_6N_out": 6 * out * d, "loss": 3 + n / 1e5 - d / 1e7})  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    _write_csv(path / "results.csv", rows)
    return path
