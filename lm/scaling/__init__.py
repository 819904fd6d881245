"""Scaling laws: sweeps (sweep.py), fits (the fit package), reports and plots (the report
package).

Constants the command line needs without importing JAX live here."""

APPROACHES = ("kaplan", "1", "2", "3")

# Relative tolerance for "the same compute budget": rows whose C lie within 10% of the first
# (smallest) C of a group share a budget. IsoFLOP grids are usually spaced by >= 1.5x (Chinchilla
# used 6e18, 1e19, 3e19, ...), and "6ND" accounting differs from the planned budget by a few
# percent, so 10% separates budgets without splitting one.
DEFAULT_BUDGET_TOL = 0.10

# The report's bootstrap resamples per fit (`lm scaling plot --bootstrap`): for approach 3, ~100
# lanes per resample-batch call keep this a few seconds.
N_BOOT = 200
