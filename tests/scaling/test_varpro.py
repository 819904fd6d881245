"""Approach 3 by variable projection (lm.scaling.fit.varpro) against the five-parameter L-BFGS
fit of the same objective, against brute-force minimisation of its inner problem, and on data
with a known answer."""

import numpy as np
import pytest
from scipy import optimize

from lm.scaling import fit as F
from lm.scaling.fit import varpro

CHIN = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022, eq. 10
GRID = np.round(np.arange(0.1, 2.0001, 0.1), 10)  # coarser than the default: a faster test


def _runs(n=120, noise=0.01, seed=0, c=CHIN):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    L = c["E"] + c["A"] / N ** c["alpha"] + c["B"] / D ** c["beta"]
    return {"N": N, "D": D, "L": L * np.exp(rng.normal(0.0, noise, n))}


def test_exact_data_give_the_constants_back():
    res = varpro.fit_approach3_varpro(_runs(noise=0.0), grid=GRID)
    for k, v in CHIN.items():
        assert res.params[k] == pytest.approx(v, rel=1e-5), k
    assert res.stats["objective"] < 1e-16  # float rounding: log residuals of ~1e-10


def test_same_optimum_as_the_five_parameter_lbfgs():
    runs = _runs(noise=0.01, seed=1)
    vp = varpro.fit_approach3_varpro(runs, grid=GRID)
    lb = F.fit_approach3(runs, starts=F.chinchilla_grid()[::5])
    assert vp.stats["objective"] == pytest.approx(lb.stats["objective"], rel=1e-9)
    for k in ("E", "A", "B", "alpha", "beta", "a", "b"):
        assert vp.params[k] == pytest.approx(lb.params[k], rel=1e-5), k
    # the point of it: the projected problem is far better conditioned
    assert vp.stats["condition_projected"] < 1e3 < vp.stats["condition_full"] / 1e3


def test_the_inner_problem_matches_brute_force():
    """For fixed exponents, (E, A, B) >= 0 minimising the Huber log objective, against L-BFGS-B
    over the three coefficients from many starts."""
    runs = _runs(noise=0.02, seed=2)
    logN, logD, logL = (np.log(runs[k]) for k in ("N", "D", "L"))
    w = np.ones(logN.size)
    X = varpro.basis(logN, logD, 0.3, 0.25)
    c, f = varpro.inner(X, logL, w, F.HUBER_DELTA)

    def obj(c_):
        p = X @ c_
        return varpro.huber_sum(np.log(p) - logL, w, F.HUBER_DELTA) if np.all(p > 0) else 1e9

    best = min(
        (optimize.minimize(obj, x0, method="L-BFGS-B", bounds=[(0, None)] * 3,
                           options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
         for x0 in ([1.0, 100.0, 100.0], [2.0, 1000.0, 10.0], [0.5, 10.0, 3000.0])),
        key=lambda r: r.fun,
    )  # fmt: skip
    assert np.all(c >= 0)
    assert f <= best.fun * (1 + 1e-9)
    assert f == pytest.approx(best.fun, rel=1e-6)


def test_integer_weights_equal_repeated_rows():
    runs = _runs(n=60, noise=0.01, seed=3)
    counts = np.random.default_rng(4).integers(0, 3, 60)
    weighted = varpro.fit_approach3_varpro(runs, grid=GRID, weights=counts)
    repeated = varpro.fit_approach3_varpro(
        {k: np.repeat(v, counts) for k, v in runs.items()}, grid=GRID
    )
    assert weighted.stats["objective"] == pytest.approx(repeated.stats["objective"], rel=1e-9)
    for k in ("E", "alpha", "beta"):
        assert weighted.params[k] == pytest.approx(repeated.params[k], rel=1e-6), k


def test_too_few_rows_is_one_line():
    with pytest.raises(F.FitError, match=">= 5 rows"):
        varpro.fit_approach3_varpro({k: v[:4] for k, v in _runs().items()})
