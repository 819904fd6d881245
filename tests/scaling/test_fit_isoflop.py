"""Chinchilla approach 2 on IsoFLOP data that looks like the published kind.

The synthetic sweeps here have what broke one-parabola-per-budget fits: every budget samples a
fixed ladder of model sizes (1.5x apart) over 2-3 decades of N, lopsided around the optimum
(up to 2 decades on one side, 0.5-1 on the other), the largest models of small budgets are
still in warmup (losses up to 10 at tiny D), the losses carry 0.3% multiplicative noise, and
one budget stops short of its optimum (its minimum is at the largest sampled size).

Compute is counted with FLOPs per token other than 6N (attention, or an output layer), so the
true allocation exponents are not beta/(alpha+beta) and b != 1 - a. The truth is derived
numerically from the loss surface, independently of the fitter: minimise L(N, C/fpt(N)) over N
at each budget, then least squares of log N_opt and log D_opt on log C.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
from scipy import optimize

from lm.cli import scaling
from lm.scaling import fit as F

# Loss surfaces L = E + A/N^alpha + B/D^beta. CHIN: Hoffmann et al. 2022's fit (a = 0.45
# under 6ND). EQUAL: alpha = beta (a = 1/2 under 6ND), A/B set for ~20 tokens per parameter.
CHIN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
EQUAL = {"E": 1.8, "A": 200.0, "B": 490.0, "alpha": 0.3, "beta": 0.3}
BUDGETS = tuple(np.geomspace(1e17, 1e21, 9))
EDGE_BUDGET = 3e21  # sampled only below its optimum


def fpt_attention(N):
    """6N plus causal attention, 12 n_layer seq d_model, for d_model = 64 n_layer, seq 2048."""
    return 6.0 * N + 1200.0 * N ** (2 / 3)


def fpt_output(N):
    """6N plus an output layer of a 50k vocabulary not counted in N: 6 V d_model."""
    return 6.0 * N + 5.2e5 * N ** (1 / 3)


def fpt_6n(N):
    return 6.0 * N


SURFACES = {"chin": CHIN, "equal": EQUAL}
CONVENTIONS = {"attention": fpt_attention, "output": fpt_output, "6N": fpt_6n}


def loss(N, D, c):
    return c["E"] + c["A"] / N ** c["alpha"] + c["B"] / D ** c["beta"]


def optimum(C, c, fpt):
    """(N_opt, D_opt) minimising L along fpt(N) D = C: a grid for the basin, then Brent."""
    f = lambda x: loss(np.exp(x), C / fpt(np.exp(x)), c)
    xs = np.linspace(math.log(1e3), math.log(C / 6) / 2 + 5, 4000)
    i = int(np.argmin(f(xs)))
    res = optimize.minimize_scalar(
        f, bounds=(xs[i - 1], xs[i + 1]), method="bounded", options={"xatol": 1e-10}
    )
    N = math.exp(res.x)
    return N, C / fpt(N)


@functools.cache
def truth(surface, convention, budgets=BUDGETS):
    """The allocation exponents (a, b) over `budgets`, from the exact optima."""
    c, fpt = SURFACES[surface], CONVENTIONS[convention]
    opt = np.array([optimum(C, c, fpt) for C in budgets])
    a = np.polyfit(np.log(budgets), np.log(opt[:, 0]), 1)[0]
    b = np.polyfit(np.log(budgets), np.log(opt[:, 1]), 1)[0]
    return float(a), float(b)


def isoflop_sweep(surface, convention, seed, noise=0.003, ratio=1.5, d_warm=5e7):
    """A sweep as described in the module docstring; returns Runs."""
    c, fpt = SURFACES[surface], CONVENTIONS[convention]
    rng = np.random.default_rng(seed)
    ladder = 5e5 * ratio ** np.arange(70)
    N, C = [], []
    for i, budget in enumerate((*BUDGETS, EDGE_BUDGET)):
        n_opt = optimum(budget, c, fpt)[0]
        if budget == EDGE_BUDGET:
            below, above = 1.8, -0.5  # stops half a decade short of the optimum
        else:  # lopsided: alternately 1.9 decades below and 0.8 above, or 0.7 and 2.0
            below, above = (1.9, 0.8) if i % 2 else (0.7, 2.0)
            below, above = below + rng.uniform(-0.15, 0.15), above + rng.uniform(-0.15, 0.15)
        sizes = ladder[(ladder >= n_opt * 10**-below) & (ladder <= n_opt * 10**above)]
        N += list(sizes)
        C += [budget] * sizes.size
    N, C = np.array(N), np.array(C)
    D = C / fpt(N)
    L = loss(N, D, c)
    # Warmup: a model stopped after fewer than d_warm tokens is far above the law, up to 10.
    L = np.where(D < d_warm, np.minimum(10.0, L * (d_warm / D) ** 0.4), L)
    L = L * np.exp(rng.normal(0.0, noise, L.size))
    return F.Runs.from_arrays(N, D, L, C)


CASES = [("chin", "attention"), ("chin", "output"), ("equal", "attention"), ("equal", "output")]


def _one_parabola_per_budget(r):
    """The textbook approach 2 this module guards against: one parabola in log N through every
    point of each budget, D_opt = C / (6 N_opt), and both power laws on those."""
    labels = F.compute_budgets(r.C)
    C, N_opt = [], []
    for g in range(labels.max() + 1):
        rows = labels == g
        c2, c1, _ = np.polyfit(np.log(r.N[rows]), r.L[rows], 2)
        C.append(r.C[rows][0])
        N_opt.append(math.exp(-c1 / (2 * c2)))
    C, N_opt = np.array(C), np.array(N_opt)
    return np.polyfit(np.log(C), np.log(N_opt), 1)[0], np.polyfit(np.log(C), np.log(C / N_opt), 1)[
        0
    ]


def test_the_synthetic_sweeps_are_hard():
    # What the fitter must cope with is really there: wide, lopsided budgets with warmup
    # outliers, and a non-6N convention that separates b from 1 - a.
    r = isoflop_sweep("chin", "attention", seed=0)
    labels = F.compute_budgets(r.C)
    spans = [np.log10(r.N[labels == g].max() / r.N[labels == g].min()) for g in range(10)]
    assert min(spans[:9]) > 2.0 and max(spans) < 3.1
    assert r.L.max() >= 7.0 and np.sum(r.L > 2 * np.median(r.L)) >= 3
    a, b = truth("chin", "output")
    assert abs(b - (1 - a)) > 0.05
    # One parabola through all of each budget misses by more than this module's tolerance.
    a_wide, b_wide = _one_parabola_per_budget(r)
    a, b = truth("chin", "attention")
    assert max(abs(a_wide - a), abs(b_wide - b)) > 0.03


@pytest.mark.parametrize(("surface", "convention"), CASES)
def test_approach2_recovers_a_and_b_on_realistic_sweeps(surface, convention):
    a, b = truth(surface, convention)
    for seed in range(3):
        res = F.fit_approach2(isoflop_sweep(surface, convention, seed))
        assert res.params["a"] == pytest.approx(a, abs=0.02), (seed, res.params)
        assert res.params["b"] == pytest.approx(b, abs=0.02), (seed, res.params)
        # The budget sampled only below its optimum is dropped and listed; the rest are used.
        assert res.stats["n_budgets"] == len(res.details["budgets"]) == 9
        (dropped,) = res.details["dropped_budgets"]
        assert dropped["C"] == pytest.approx(EDGE_BUDGET)
        assert dropped["reason"] == "empirical minimum at the largest sampled size"
        for m in res.details["budgets"]:
            assert m["interior"] and 5 <= m["n_sizes_used"] <= 9 < m["n_sizes"]
            assert m["window_N"][0] < m["N_opt"] < m["window_N"][1]
        assert res.stats["noise_rel"] == pytest.approx(0.003, rel=0.35)


def test_b_is_fitted_on_its_own_not_as_1_minus_a():
    a, b = truth("chin", "output")
    for seed in range(3):
        res = F.fit_approach2(isoflop_sweep("chin", "output", seed))
        p = res.params
        assert p["b"] == pytest.approx(b, abs=0.02)
        assert abs(p["b"] - (1 - p["a"])) > 0.03  # C / (6 N_opt) would force b = 1 - a
        # Each D_opt is the data's own tokens at N_opt: D_opt = C / fpt(N_opt) to < 0.5%.
        for m in res.details["budgets"]:
            assert m["D_opt"] == pytest.approx(m["C"] / fpt_output(m["N_opt"]), rel=5e-3)


def _budget(x, y, C=1e20):
    """One budget's rows from log10 N offsets x and losses y; D from C = 6ND."""
    N = 1e9 * 10 ** np.asarray(x, float)
    return N, C / (6 * N), np.asarray(y, float), np.full(N.size, C)


def _runs(*budgets):
    return F.Runs.from_arrays(*(np.concatenate(cols) for cols in zip(*budgets, strict=True)))


def test_budgets_without_a_trustworthy_minimum_are_dropped_with_a_reason():
    x = np.arange(-3, 4) * 0.3
    good = lambda C: _budget(x, 2.0 + 0.05 * (x - 0.1) ** 2, C)
    smallest = _budget(x, 2.0 + 0.05 * (x + 1.5) ** 2, 3e20)  # optimum below the sizes
    # The lowest loss is interior, but the window around it bulges: no minimum to vouch for.
    flat = _budget(x, [1.9, 1.52, 1.6, 1.5, 1.6, 1.52, 1.9], 1e21)
    thin = _budget(x[:2], [2.0, 2.1], 3e21)
    res = F.fit_approach2(_runs(good(1e19), good(1e20), smallest, flat, thin))
    reasons = {round(math.log10(d["C"]), 1): d["reason"] for d in res.details["dropped_budgets"]}
    assert reasons == {
        20.5: "empirical minimum at the smallest sampled size",
        21.0: "no minimum near the empirical one: the window's parabola opens downward",
        21.5: "fewer than 3 model sizes",
    }
    assert res.stats["n_budgets"] == 2 and res.stats["n_budgets_dropped"] == 3
    for m in res.details["budgets"]:
        assert math.log10(m["N_opt"] / 1e9) == pytest.approx(0.1, abs=1e-9)
    with pytest.raises(F.FitError, match=r"got 1 .*1 x empirical minimum at the smallest"):
        F.fit_approach2(_runs(good(1e19), smallest))


def test_window_recentres_on_its_own_vertex():
    # Noise made the lowest loss a neighbour of the optimum: the window moves onto the vertex.
    x = np.arange(-6, 7) * 0.15
    y = 2.0 + 0.05 * (x - 0.3) ** 2
    y[np.argmin(np.abs(x - 0.0))] -= 0.006  # a lucky point 2 sizes below the optimum
    res = F.fit_approach2(_runs(_budget(x, y, 1e19), _budget(x, 2.0 + 0.05 * x**2, 1e20)))
    m = res.details["budgets"][0]
    assert m["N_empirical"] == pytest.approx(1e9)
    assert m["n_recentred"] >= 1
    assert m["window_N"][0] < 1e9 * 10**0.3 < m["window_N"][1]
    assert math.log10(m["N_opt"] / 1e9) == pytest.approx(0.3, abs=0.05)


def test_bootstrap_keeps_every_budget_and_matches_the_sampling_spread():
    r = isoflop_sweep("chin", "output", seed=1)
    res = F.fit(r, "2", n_bootstrap=200, seed=3)
    assert {"a", "b", "k_N", "k_D"} == set(res.ci95)
    for k in ("a", "b"):
        assert res.ci95[k][0] < res.params[k] < res.ci95[k][1]
    assert res.bootstrap["n_ok"] == 200 and "residual bootstrap" in res.bootstrap["method"]
    assert F.bootstrap(r, "2", 200, seed=3).ci95 == res.ci95
    # Calibration: the residual bootstrap's spread of a matches the spread of fits to fresh
    # noise on the same design (their sd ratio was 1.05 over 10 noise draws).
    clean = isoflop_sweep("chin", "output", seed=1, noise=0.0)
    rng = np.random.default_rng(0)
    fresh = [
        F.fit_approach2(clean.with_loss(clean.L * np.exp(rng.normal(0, 0.003, len(r))))).params
        for _ in range(100)
    ]
    boot = F.bootstrap(r, "2", 200, seed=3).samples
    for k in ("a", "b"):
        ratio = np.std(boot[k]) / np.std([p[k] for p in fresh])
        assert 0.65 < ratio < 1.5, (k, ratio)


def test_bootstrap_without_residuals_resamples_rows_within_budgets():
    # Three sizes per budget: each window parabola passes through its points exactly, leaving
    # no residuals to estimate the noise from.
    x = np.array([-0.3, 0.0, 0.3])
    rng = np.random.default_rng(0)
    budgets = [
        _budget(x, 2.0 + 0.05 * (x - 0.4 * k / 3) ** 2 + rng.normal(0, 1e-3, 3), C)
        for k, C in enumerate((1e19, 1e20, 1e21))
    ]
    b = F.bootstrap(_runs(*budgets), "2", 20, seed=0)
    assert "rows resampled within each budget" in b.info["method"]
    assert b.info["n_ok"] + b.info["n_failed"] == 20


def test_extrapolation_check_holds_out_the_largest_used_budget():
    r = isoflop_sweep("equal", "attention", seed=0)
    ex = F.extrapolation_check(r, "2")
    assert ex["held_out_C"] == pytest.approx(BUDGETS[-1])  # not the dropped edge budget
    assert ex["n_train_budgets"] == 8
    assert abs(ex["rel_error"]) < 0.15 and abs(ex["D_rel_error"]) < 0.15


def test_cli_approach2_writes_the_approach2_document(tmp_path, capsys):
    r = isoflop_sweep("chin", "attention", seed=2)
    csv_path, out = tmp_path / "runs.csv", tmp_path / "fit.json"
    rows = zip(r.N.tolist(), r.D.tolist(), r.C.tolist(), r.L.tolist(), strict=True)
    lines = ["N,D,C,loss"] + [f"{n!r},{d!r},{c!r},{v!r}" for n, d, c, v in rows]
    csv_path.write_text("\n".join(lines) + "\n")
    argv = ["fit", "--runs", str(csv_path), "--approach", "2", "--out", str(out)]
    assert scaling.main([*argv, "--bootstrap", "40"]) == 0
    doc = json.loads(out.read_text())["approach2"]
    a, b = truth("chin", "attention")
    assert doc["a"] == pytest.approx(a, abs=0.02) and doc["b"] == pytest.approx(b, abs=0.02)
    assert set(doc["ci95"]) >= {"a", "b"} and all(len(v) == 2 for v in doc["ci95"].values())
    assert doc["budgets_used"] == 9 == len(doc["budgets"])
    (dropped,) = doc["budgets_dropped"]
    assert list(dropped)[:2] == ["C", "reason"] and dropped["C"] == pytest.approx(EDGE_BUDGET)
    assert "dropped budget" in capsys.readouterr().out
    assert scaling.main(argv) == 0
    assert "ci95" not in json.loads(out.read_text())["approach2"]


def test_cli_fits_only_a_sweeps_main_rows(tmp_path):
    # A sweep's results.csv also holds LR-sweep runs at other rates: those rows must not join
    # the IsoFLOP budgets (one at a budget's compute would bend its profile).
    import csv
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "experiments/results/cpu-tiny"
    rows = list(csv.DictReader((src / "results.csv").open()))
    assert {r["group"] for r in rows} >= {"main", "lr", "seed"}
    out = tmp_path / "fit.json"
    argv = ["fit", "--runs", str(src / "results.csv"), "--approach", "2", "--out", str(out),
            "--n-column", "N_out", "--flops-column", "C_6N_out_attn",
            "--no-extrapolation"]  # fmt: skip
    assert scaling.main(argv) == 0
    doc = json.loads(out.read_text())["approach2"]
    assert doc["budgets_used"] == 8 and doc["budgets_dropped"] == []
