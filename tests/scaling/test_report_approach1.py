"""Approach 1 on finished runs (lm.scaling.report.fits.finished_run_curves): the curves a WSD
sweep's branches make, checked against the closed-form optimum of a known loss surface."""

import numpy as np
import pytest

from lm.scaling import fit as F
from lm.scaling.report.fits import finished_run_curves

# Hoffmann et al. 2022's fitted surface; under C = 6ND its optimum is N_opt ~ C^(beta/(alpha+beta)).
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def _runs(noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    N, D = [], []
    for n in np.geomspace(1e6, 1e9, 21):  # a x1.41 ladder over 3 decades
        for d in np.geomspace(2e7, 2e11, 13):  # each size's finished runs, x2.15 apart
            if 2 <= d / n <= 2000:
                N.append(n)
                D.append(d)
    N, D = np.array(N), np.array(D)
    L = (E + A / N**ALPHA + B / D**BETA) * np.exp(rng.normal(0.0, noise, N.size))
    return F.Runs.from_arrays(N, D, L)


def test_finished_run_curves_stay_inside_each_sizes_runs():
    runs = _runs()
    curves = finished_run_curves(runs)
    for n in np.unique(runs.N):
        d = runs.D[runs.N == n]
        dc = curves.D[curves.N == n]
        assert dc.min() == pytest.approx(d.min()) and dc.max() == pytest.approx(d.max())
        # Monotone between neighbouring runs (PCHIP does not overshoot): every point's loss
        # lies between the losses of the two finished runs around it.
        order = np.argsort(d)
        d, l = d[order], runs.L[runs.N == n][order]
        for dj, lj in zip(dc, curves.L[curves.N == n], strict=True):
            k = min(max(np.searchsorted(d, dj), 1), d.size - 1)
            lo, hi = sorted((l[k - 1], l[k]))
            assert lo * (1 - 1e-9) <= lj <= hi * (1 + 1e-9)
    # Every point is labelled by the finished run that ends its segment: as many labels as runs.
    assert np.unique(curves.run).size == len(runs)


@pytest.mark.parametrize("noise", [0.0, 0.002])
def test_approach1_on_finished_runs_recovers_the_exponent(noise):
    truth = BETA / (ALPHA + BETA)
    res = F.fit_approach1(finished_run_curves(_runs(noise)), smooth_width=0.0)
    assert res.params["a"] == pytest.approx(truth, abs=0.03)
    assert res.params["b"] == pytest.approx(1 - truth, abs=0.03)


def test_one_token_count_per_size_has_no_finished_run_curves():
    runs = F.Runs.from_arrays([1e6, 2e6, 4e6], [1e8, 1e8, 1e8], [3.0, 2.9, 2.8])
    assert finished_run_curves(runs) is None
