"""Scaling-law fitting: Kaplan et al. 2020 and the three Chinchilla approaches.

A pure library: every fitter takes plain arrays of model size N (parameters), training tokens D,
final loss L and, optionally, training compute C (FLOPs; C = 6ND when absent) and run labels,
and returns a frozen `FitResult`. Nothing here knows about this repository's training code, so
it works on anyone's runs.

References
----------
- Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv:2001.08361.
- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla),
  arXiv:2203.15556: approach 1 (sec. 3.1, the envelope of training curves), approach 2
  (sec. 3.2, IsoFLOP profiles), approach 3 (sec. 3.3 and appendix D.2, the parametric fit).
- Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling of Language Models",
  arXiv:2406.19146. They locate each IsoFLOP minimum by interpolating around the empirical
  minimum instead of one parabola through the whole profile, and count compute with the
  output layer's FLOPs, under which D_opt = C / (6 N_opt) is wrong.
- Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv:2404.10102. They
  refit approach 3 on the paper's own data and found the published estimates were not the
  optimum of the stated objective (the optimizer stopped early) and the intervals implausibly
  narrow. That is why approach 3 here uses tight tolerances, keeps the best of the full start
  grid, and reports bootstrap intervals.
- Czech et al. 2026, "Problems with Chinchilla Approach 2", arXiv:2603.22339: the biases of
  wide, uncentred IsoFLOP parabola fits, which the local window of approach 2 here limits.

How approaches 1 and 2 are made robust
--------------------------------------
Approach 2 (`isoflop_minima`): per budget, the empirical minimum; budgets whose minimum is at
the smallest or largest sampled size are dropped (and listed with the reason); a parabola in
log N over a window of sizes around the minimum only (re-centred on its own vertex), so the
far, lopsided ends of a profile and warmup-phase points at tiny D do not bend it; D_opt read
off the data at N_opt (never C / 6N_opt), and b fitted on its own. The bootstrap is a
residual bootstrap that keeps every budget's design.
Approach 1 (`fit_approach1`): each run's loss curve smoothed (`smooth_curves`) before the
envelope, envelope rows at the smallest and largest size left out, designs that cannot
identify a refused, and the bootstrap resamples whole runs.

Modules
-------
data:          `Runs` (validated, read-only arrays, optional run labels), `FitError` (one-line
               message for bad input), `read_runs` (a CSV of runs).
result:        `FitResult` (frozen; `.to_json()` for output), `jsonable`, and the outputs of
               `lm scaling fit`: `format_table`, `approach2_json`.
kaplan, approach1, approach2, approach3:
               `fit_kaplan`, `fit_approach1`, `fit_approach2`, `fit_approach3`, each with its
               pieces: `kaplan_joint_loss`; `smooth_curves`; `isoflop_minima`,
               `isoflop_budgets`; `approach3_log_predict`, `approach3_objective`,
               `approach3_value_and_grad`, `approach3_evaluator`, `approach3_params`,
               `approach3_predict`, `approach3_compute_optimal`, `chinchilla_grid`.
varpro:        `fit_approach3_varpro`: approach 3's objective by variable projection (Golub and
               Pereyra 1973): E, A, B solved for each (alpha, beta), only the exponents searched.
dispatch:      `fit_one` dispatches on "kaplan" / "1" / "2" / "3".
resample:      `bootstrap` -> `Bootstrap` (percentile 95% intervals; rows, runs or residuals by
               approach), `bootstrap_starts`.
extrapolation: `extrapolation_check` (hold out the largest compute budget, predict it).
frontier:      `fit_loss_frontier`, `loss_frontier`: the compute-optimal loss L*(C) = E + K C^-g
               (or K C^-g where E is not identified) through approaches 1 and 2's optima.
pipeline:      `fit`, which also attaches the bootstrap intervals and the extrapolation check.
lbfgs:         the optimizer `batched_lbfgs` -> `BatchedMinimum`.
shared:        `power_law_fit`, `group_relative`, `compute_budgets`, `lower_envelope`.

Everything public is importable from the package itself (`from lm.scaling import fit as F;
F.fit(...)`).
"""

from lm.scaling import APPROACHES, DEFAULT_BUDGET_TOL
from lm.scaling.fit.approach1 import SMOOTH_WIDTH, fit_approach1, smooth_curves
from lm.scaling.fit.approach2 import (
    ISOFLOP_WINDOW,
    ISOFLOP_WINDOW_DECADES,
    fit_approach2,
    isoflop_budgets,
    isoflop_minima,
)
from lm.scaling.fit.approach3 import (
    A3_OPTIONS,
    A3_PARAMS,
    APPROACH3_FORMULA,
    HUBER_DELTA,
    approach3_compute_optimal,
    approach3_evaluator,
    approach3_log_predict,
    approach3_objective,
    approach3_params,
    approach3_predict,
    approach3_value_and_grad,
    chinchilla_grid,
    fit_approach3,
)
from lm.scaling.fit.data import FitError, Runs, as_runs, read_runs
from lm.scaling.fit.dispatch import approach_key, fit_one
from lm.scaling.fit.extrapolation import extrapolation_check
from lm.scaling.fit.frontier import (
    LOSS_FRONTIER_FORMULA,
    MIN_POINTS_FOR_E,
    POWER_FRONTIER_FORMULA,
    fit_loss_frontier,
    loss_frontier,
)
from lm.scaling.fit.kaplan import KAPLAN_FORMULA, fit_kaplan, kaplan_joint_loss
from lm.scaling.fit.lbfgs import BATCH_SIZES, LBFGS_STATUS, BatchedMinimum, batched_lbfgs
from lm.scaling.fit.pipeline import fit
from lm.scaling.fit.resample import Bootstrap, bootstrap, bootstrap_starts
from lm.scaling.fit.result import FitResult, approach2_json, format_table, jsonable
from lm.scaling.fit.shared import (
    ALLOCATION_FORMULA,
    ENVELOPE_BINS,
    SIZE_TOL,
    compute_budgets,
    group_relative,
    lower_envelope,
    power_law_fit,
    rel_err_stats,
    safe_exp,
)
from lm.scaling.fit.varpro import fit_approach3_varpro

__all__ = [
    "A3_OPTIONS",
    "A3_PARAMS",
    "ALLOCATION_FORMULA",
    "APPROACH3_FORMULA",
    "APPROACHES",
    "BATCH_SIZES",
    "DEFAULT_BUDGET_TOL",
    "ENVELOPE_BINS",
    "HUBER_DELTA",
    "ISOFLOP_WINDOW",
    "ISOFLOP_WINDOW_DECADES",
    "KAPLAN_FORMULA",
    "LBFGS_STATUS",
    "LOSS_FRONTIER_FORMULA",
    "MIN_POINTS_FOR_E",
    "POWER_FRONTIER_FORMULA",
    "SIZE_TOL",
    "SMOOTH_WIDTH",
    "BatchedMinimum",
    "Bootstrap",
    "FitError",
    "FitResult",
    "Runs",
    "approach2_json",
    "approach3_compute_optimal",
    "approach3_evaluator",
    "approach3_log_predict",
    "approach3_objective",
    "approach3_params",
    "approach3_predict",
    "approach3_value_and_grad",
    "approach_key",
    "as_runs",
    "batched_lbfgs",
    "bootstrap",
    "bootstrap_starts",
    "chinchilla_grid",
    "compute_budgets",
    "extrapolation_check",
    "fit",
    "fit_approach1",
    "fit_approach2",
    "fit_approach3",
    "fit_approach3_varpro",
    "fit_kaplan",
    "fit_loss_frontier",
    "fit_one",
    "format_table",
    "group_relative",
    "isoflop_budgets",
    "isoflop_minima",
    "jsonable",
    "kaplan_joint_loss",
    "loss_frontier",
    "lower_envelope",
    "power_law_fit",
    "read_runs",
    "rel_err_stats",
    "safe_exp",
    "smooth_curves",
]
