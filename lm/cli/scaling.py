"""`lm scaling fit`: fit scaling laws to a CSV of runs and write the constants as JSON.

    lm scaling fit --runs runs.csv --approach 3 --bootstrap 1000 --out fit.json

A `group` column (as in a sweep's results.csv) keeps only the rows whose group is `main` or
empty. The CSV needs columns for model size N (parameters), training tokens D and final loss (names
set by --n-column, --d-column, --loss-column); compute C (FLOPs, --flops-column) is optional
and defaults to 6ND. Every value must be a positive number. An optional run-label column
(--run-column, default 'name' when present) says which rows are checkpoints of one training
run: approach 1 smooths each run's curve and its bootstrap resamples whole runs. Bad input
ends with one line on stderr naming the culprit and exit code 2; no traceback.

Approach 2 writes {"approach2": {"a", "b", "ci95" (with --bootstrap), "budgets_used",
"budgets_dropped": [{"C", "reason", ...}], and the rest of the fit: k_N, k_D, budgets (the
IsoFLOP minima), stats, bootstrap, extrapolation, ...}}; the other approaches write the fit's
keys at the top level.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lm.cli.common import UsageError
from lm.scaling import APPROACHES, DEFAULT_BUDGET_TOL, N_BOOT
from lm.util.files import atomic_write


def add_fit_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `fit` on the subparsers object of `lm scaling`."""
    p = sub.add_parser(
        "fit",
        help="fit scaling laws (Kaplan; Chinchilla approaches 1, 2, 3) to a CSV of runs",
        description="Fit scaling laws to a CSV of runs: Kaplan et al. 2020 ('kaplan') or "
        "Hoffmann et al. 2022 approaches 1-3. Writes JSON and prints a table.",
    )
    p.add_argument("--runs", required=True, type=Path, help="CSV with one row per run/checkpoint")
    p.add_argument(
        "--approach",
        required=True,
        choices=APPROACHES,
        help="kaplan: Kaplan et al. 2020's power laws; 1: the loss envelope over compute; 2: "
        "IsoFLOP minima; 3: the parametric L(N, D) (Hoffmann et al. 2022)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="K",
        help="K bootstrap resamples for 95%% percentile intervals (0: none): rows; approach 1 "
        "whole runs; approach 2 loss residuals within each budget",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", type=Path, default=Path("fit.json"), help="JSON output path")
    p.add_argument(
        "--flops-column",
        default=None,
        metavar="C",
        help="compute column; default: 'C' if present, else 6*N*D",
    )
    p.add_argument("--n-column", default="N", metavar="N", help="parameters column")
    p.add_argument("--d-column", default="D", metavar="D", help="tokens column")
    p.add_argument("--loss-column", default="loss", metavar="LOSS", help="loss column")
    p.add_argument(
        "--run-column",
        default=None,
        metavar="NAME",
        help="run-label column: rows with one label are one run's loss curve (approach 1 "
        "smooths each curve and bootstraps whole runs); default: 'name' if present; '' for none",
    )
    p.add_argument(
        "--budget-tol",
        type=float,
        default=DEFAULT_BUDGET_TOL,
        help="relative tolerance grouping rows into compute budgets (default %(default)s)",
    )
    p.add_argument(
        "--no-extrapolation",
        action="store_true",
        help="skip the hold-out-the-largest-budget check",
    )
    p.set_defaults(func=run_fit)
    return p


def run_fit(args: argparse.Namespace) -> int:
    """Read, fit, write JSON, print the table. Returns 0, or 2 on bad input."""
    from lm.scaling import fit as F  # lazy: jax loads only when a command runs

    try:
        runs = F.read_runs(
            args.runs,
            args.n_column,
            args.d_column,
            args.loss_column,
            args.flops_column,
            args.run_column,
        )
        if args.bootstrap < 0:
            raise F.FitError(f"--bootstrap must be >= 0, got {args.bootstrap}")
        if not 0 < args.budget_tol < 1:
            raise F.FitError(f"--budget-tol must be in (0, 1), got {args.budget_tol}")
        print(
            f"fitting approach {args.approach} on {len(runs)} rows"
            + (f" with {args.bootstrap} bootstrap resamples" if args.bootstrap else "")
            + " ...",
            flush=True,
        )  # stdout: stderr carries only the one-line error, if any
        result = F.fit(
            runs,
            args.approach,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            extrapolate=not args.no_extrapolation,
            budget_tol=args.budget_tol,
        )
    except F.FitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = result.to_json()
    doc = {"approach2": F.approach2_json(out)} if result.approach == "2" else out
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(F.format_table(out, list(result.params)))
    print(f"\nwrote {args.out}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `scaling` (fit, plot) on the `lm` subparsers."""
    sc = sub.add_parser(
        "scaling",
        help="fit and plot scaling laws from runs",
        description="Fit scaling laws to a results.csv (lm scaling fit) or write a "
        "sweep's report, fits and plots (lm scaling plot).",
    )
    ssub = sc.add_subparsers(dest="scaling_command", required=True)
    add_fit_parser(ssub)
    add_plot_parser(ssub)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m lm.cli.scaling fit --runs ...`."""
    parser = argparse.ArgumentParser(prog="lm scaling")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.sweep)
    if not (out / "results.csv").is_file():
        raise FileNotFoundError(f"--sweep {out}: no results.csv (run `lm sweep run` first)")
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    for rep in args.replicates:
        if not Path(rep).is_dir() or not (Path(rep) / "fit.json").is_file():
            what = "no such directory" if not Path(rep).is_dir() else "no fit.json in it"
            raise UsageError(f"--replicates {rep}: not a sweep output with a report ({what})")
    from lm.scaling.report.build import write_report  # lazy: jax loads only when a command runs
    from lm.scaling.report.uncertainty import ReplicateError  # lazy, as above

    try:
        write_report(out, None, print_fn=print, n_boot=args.bootstrap, seed=args.seed,
                     replicates=args.replicates)  # fmt: skip
    except ReplicateError as e:
        raise UsageError(str(e)) from None
    return 0


def add_plot_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `plot` on the subparsers object of `lm scaling`."""
    p = sub.add_parser(
        "plot",
        help="fits, plots and report.md for a sweep directory (from its CSVs)",
        description="Regenerate DIR/report.md, DIR/fit.json and DIR/plots/ from the "
        "results.csv, curves.csv, sweep.json (and lr.json) that `lm sweep run` wrote. Failed "
        "checks are reported, not errors: the exit status is 0.",
    )
    p.add_argument("--sweep", required=True, help="sweep directory (lm sweep run --out DIR)")
    p.add_argument("--bootstrap", type=int, default=N_BOOT, metavar="K",
                   help="bootstrap resamples per fit (default %(default)s; 0: none)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--replicates",
        nargs="+",
        default=[],
        metavar="DIR",
        help="other whole-pipeline runs of the same sweep file (other seeds, LR search "
        "included), each a sweep directory with its report written: how far their a lies from "
        "this run's widens ci95_total (see report.md, Sensitivity)",
    )
    p.set_defaults(func=cmd_plot)
    return p


if __name__ == "__main__":
    sys.exit(main())
