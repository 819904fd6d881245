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
import csv
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm.cli.common import UsageError
from lm.scaling import APPROACHES, DEFAULT_BUDGET_TOL, N_BOOT

if TYPE_CHECKING:
    from lm.scaling.fit import Runs


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


def read_runs(
    path: Path,
    n_col: str,
    d_col: str,
    loss_col: str,
    flops_col: str | None,
    run_col: str | None = None,
) -> Runs:
    """Read and validate the CSV; raises FitError with one line naming the file, row, column.
    `run_col` None means 'name' if the CSV has it; '' means no run labels."""
    from lm.scaling import fit as F  # lazy: jax loads only when a command runs

    if not path.is_file():
        raise F.FitError(f"runs file not found: {path}")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise F.FitError(f"cannot read {path}: {e}") from None
    if not header:
        raise F.FitError(f"{path} is empty (no header row)")
    c_col = flops_col if flops_col is not None else ("C" if "C" in header else None)
    wanted = [(n_col, "--n-column"), (d_col, "--d-column"), (loss_col, "--loss-column")]
    if flops_col is not None:
        wanted.append((flops_col, "--flops-column"))
    if run_col is None:
        run_col = "name" if "name" in header else ""
    elif run_col:
        wanted.append((run_col, "--run-column"))
    for col, flag in wanted:
        if col not in header:
            raise F.FitError(f"column {col!r} ({flag}) not in {path}; columns: {', '.join(header)}")
    if not rows:
        raise F.FitError(f"{path} has a header but no data rows")
    if "group" in header:
        # A sweep's results.csv also holds its LR-sweep runs, extra seeds and cosine controls:
        # other learning rates and repeats of one point, not members of the scaling family.
        kept = [r for r in rows if (r.get("group") or "").strip() in ("", "main")]
        if not kept:
            raise F.FitError(f"{path}: no rows with group 'main' (or empty)")
        rows = kept
    cols = [n_col, d_col, loss_col] + ([c_col] if c_col else [])
    values: dict[str, list[float]] = {c: [] for c in cols}
    labels: list[str] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        row = {(k or "").strip(): v for k, v in row.items()}
        if run_col:
            label = (row.get(run_col) or "").strip()
            if not label:
                raise F.FitError(f"{path} line {line}, column {run_col!r}: empty run label")
            labels.append(label)
        for c in cols:
            raw = (row.get(c) or "").strip()
            try:
                v = float(raw)
            except ValueError:
                raise F.FitError(
                    f"{path} line {line}, column {c!r}: {raw!r} is not a number"
                ) from None
            if not (math.isfinite(v) and v > 0):
                raise F.FitError(
                    f"{path} line {line}, column {c!r}: {raw} must be a positive finite number"
                )
            values[c].append(v)
    return F.Runs.from_arrays(
        values[n_col],
        values[d_col],
        values[loss_col],
        values[c_col] if c_col else None,
        labels if run_col else None,
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.4e}"
    return str(v)


def format_table(out: dict[str, Any], params: list[str]) -> str:
    """The human-readable summary printed after a fit."""
    lines = [
        f"approach {out['approach']}: {out['n_points']} points",
        f"  {out['formula']}",
        "",
    ]
    ci = out.get("ci95") or {}
    head = f"  {'name':<14} {'value':>12}" + (f"  {'95% CI':>27}" if ci else "")
    lines += [head, "  " + "-" * (len(head) - 2)]
    for k in params:
        row = f"  {k:<14} {_fmt(out.get(k)):>12}"
        if k in ci:
            lo, hi = ci[k]
            row += f"  [{_fmt(lo):>11}, {_fmt(hi):>11}]"
        lines.append(row)
    if out.get("bootstrap"):
        b = out["bootstrap"]
        lines.append(f"  bootstrap: {b['n_ok']}/{b['n_boot']} resamples, {b['method']}")
    stats = out.get("stats", {})
    if "objective" in stats:
        lines.append(
            f"  objective {stats['objective']:.6g}; {stats['n_starts_at_best']}/"
            f"{stats['n_starts']} starts reached it; rms log residual "
            f"{stats['rms_log_residual']:.4g}"
        )
    if "smoothing" in stats:
        lines.append(f"  {stats['n_runs']} runs; smoothing: {stats['smoothing']}")
    if out.get("budgets"):
        lines += ["", f"  {'C':>11} {'N_opt':>11} {'D_opt':>11} {'L_opt':>8} sizes window"]
        for m in out["budgets"]:
            lines.append(
                f"  {m['C']:>11.4e} {m['N_opt']:>11.4e} {m['D_opt']:>11.4e} "
                f"{m['L_opt']:>8.4f} {m['n_sizes']:>5} {m['n_sizes_used']:>6}"
            )
        for d in out.get("dropped_budgets", []):
            lines.append(f"  dropped budget C={d['C']:.4e}: {d['reason']}")
    ex = out.get("extrapolation")
    if ex:
        if "rel_error" in ex:
            err = f"rel error {ex['rel_error']:+.3%}"
        elif "mean_abs_rel_error" in ex:
            err = (
                f"mean |rel error| {ex['mean_abs_rel_error']:.3%}, "
                f"max {ex['max_abs_rel_error']:.3%}"
            )
        else:
            err = ex.get("note", "")
        lines += [
            "",
            f"  extrapolation: fit without the largest budget (C={ex['held_out_C']:.4e}), "
            f"predict {ex['target']}: {err}",
        ]
    return "\n".join(lines)


def approach2_json(out: dict[str, Any]) -> dict[str, Any]:
    """Approach 2's output: the exponents, their intervals and which budgets were used first,
    then everything else the fit reports."""
    head: dict[str, Any] = {"a": out["a"], "b": out["b"]}
    if "ci95" in out:
        head["ci95"] = out["ci95"]
    head["budgets_used"] = len(out.get("budgets", []))
    head["budgets_dropped"] = [
        {"C": d["C"], "reason": d["reason"], **d} for d in out.get("dropped_budgets", [])
    ]
    rest = {k: v for k, v in out.items() if k not in head and k != "dropped_budgets"}
    return {**head, **rest}


def run_fit(args: argparse.Namespace) -> int:
    """Read, fit, write JSON, print the table. Returns 0, or 2 on bad input."""
    from lm.scaling import fit as F  # lazy: jax loads only when a command runs

    try:
        runs = read_runs(
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
    doc = {"approach2": approach2_json(out)} if result.approach == "2" else out
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(format_table(out, list(result.params)))
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


if __name__ == "__main__":
    sys.exit(main())


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.sweep)
    if not (out / "results.csv").is_file():
        raise FileNotFoundError(f"--sweep {out}: no results.csv (run `lm sweep run` first)")
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    from lm.scaling.report.build import write_report  # lazy: jax loads only when a command runs

    write_report(out, None, print_fn=print, n_boot=args.bootstrap, seed=args.seed)
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
    p.set_defaults(func=cmd_plot)
    return p
