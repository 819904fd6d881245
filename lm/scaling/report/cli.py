"""`lm scaling plot --sweep DIR`: the report again from a sweep directory's CSVs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lm.scaling.report.build import write_report
from lm.scaling.report.fits import N_BOOT


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.sweep)
    if not (out / "results.csv").is_file():
        raise FileNotFoundError(f"--sweep {out}: no results.csv (run `lm sweep run` first)")
    if args.bootstrap < 0:
        from lm.cliutil import UsageError

        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
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
