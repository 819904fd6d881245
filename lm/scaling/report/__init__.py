"""A sweep's scaling laws: fits, bootstrap intervals, checks, plots and a markdown report.

`write_report(DIR)` reads what `lm sweep run` wrote (DIR/results.csv, DIR/curves.csv,
DIR/sweep.json, and DIR/lr.json when the sweep searched learning rates) and writes
DIR/report.md, DIR/fit.json and DIR/plots/*.{png,svg}; `lm scaling plot --sweep DIR` does the
same from the command line. The fitting itself is lm.scaling.fit.

One module per concern, each using only the others' public names:
- conventions: the three ways of counting N and C, and which one is the sweep's own (primary);
- tables: reading the directory's files;
- controls: the seed and cosine control runs;
- isoflops: IsoFLOP sets interpolated along each size's runs, for sweeps that have none;
- allocation: approach 3's compute-optimal allocation under a convention's real FLOPs;
- fits: every approach under one convention, with bootstrap and extrapolation;
- parallel: the conventions fitted in child processes at the same time;
- exchange: the files those processes read their jobs from and write their fits to (no pickle);
- estimates: the exponents read off the fits (each approach's a with its interval);
- checks: checks that can fail, on the primary convention;
- summary: fit.json's fits and `summary` object, and the printed lines;
- markdown: report.md; plots: the figures; build: write_report (for `lm scaling plot` too).
"""

from lm.scaling import N_BOOT
from lm.scaling.report.allocation import flops_law, optimal_allocation
from lm.scaling.report.build import write_report
from lm.scaling.report.checks import run_checks
from lm.scaling.report.conventions import CONVENTIONS, Convention, primary_convention
from lm.scaling.report.fits import ConventionFit, approach2, fit_convention
from lm.scaling.report.isoflops import grid_isoflops
from lm.scaling.report.tables import read_table

__all__ = [
    "CONVENTIONS",
    "N_BOOT",
    "Convention",
    "ConventionFit",
    "approach2",
    "fit_convention",
    "flops_law",
    "grid_isoflops",
    "optimal_allocation",
    "primary_convention",
    "read_table",
    "run_checks",
    "write_report",
]
