"""write_report: read a sweep directory, fit every convention, check, plot, and write
report.md and fit.json."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lm.scaling import N_BOOT
from lm.scaling.report import checks as checks_lib
from lm.scaling.report import controls, estimates, markdown, plots, summary, tables, uncertainty
from lm.scaling.report import out_of_sample as oos_lib
from lm.scaling.report.conventions import (
    CONVENTIONS,
    DEFAULT_FLOPS_CONVENTION,
    Convention,
    n_column_for,
    primary_convention,
)
from lm.scaling.report.fits import ConventionFit
from lm.scaling.report.parallel import fit_all
from lm.util.files import atomic_write

if TYPE_CHECKING:
    from lm.scaling.sweep import SweepConfig

# Child processes for the non-primary conventions: one each. Measured on a shared 2-core
# machine, 85-row synthetic sweep: one child fitting both in turn (sharing its compiled
# programs) used 22 s of CPU against two children's 26 s, but its two fits then run one after
# the other while the parent idles; wall times were equal within the noise (46-56 s under a
# load of 3-7), and on idle cores two children balance the work better.
N_CHILDREN = 2


def write_report(
    out_dir: Path,
    sweep: SweepConfig | None = None,
    print_fn=print,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    replicates: Sequence[str | Path] = (),
) -> dict:
    """Fit, plot and write DIR/report.md, DIR/fit.json and DIR/plots/; return the key numbers.

    n_boot resamples for every bootstrap (Kaplan's capped at fits.N_BOOT_KAPLAN); 0 skips them.
    `replicates`: directories of other whole-pipeline runs of the same sweep (their report
    written), whose a widen ci95_total; uncertainty.ReplicateError, before any fit, if one
    cannot be used. Failed checks are findings: they are reported, never raised."""
    # Bootstrap resamples that fail (a flat parabola, an overflowing power) are dropped and
    # counted in the report; numpy's per-resample warnings would only bury the summary.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _write_report(
            Path(out_dir), sweep, print_fn, n_boot=n_boot, seed=seed, replicates=replicates
        )


def _write_report(out_dir: Path, sweep, print_fn, *, n_boot: int, seed: int, replicates) -> dict:
    t0 = time.perf_counter()
    t = tables.load(out_dir, sweep)
    primary, note = primary_convention(t.info)
    if note:
        t.notes.append(note)
    reps = uncertainty.read_replicates(replicates, primary.key, out_dir)
    spread = controls.seed_spread(t.rows)
    cosine = controls.wsd_vs_cosine(t.rows)
    noise, noise_src = controls.parametric_noise(spread, t.main)

    # The rows are IsoFLOP sets only in the convention the sweep planned its budgets in.
    isoflop = t.info.get("kind") == "isoflop" and note is None
    fits = _fit_conventions(t, primary, isoflop, noise, print_fn, n_boot=n_boot, seed=seed)
    t_fit = time.perf_counter() - t0
    fits[primary.key].replicates = reps
    fits[primary.key].sensitivity += uncertainty.convention_rows(fits, primary)

    checks = checks_lib.run_checks(fits[primary.key])
    lr_verdict = checks_lib.lr_check(t.lr)
    if lr_verdict is not None:
        checks.append(lr_verdict)
    # Predicted from the main rows' fits, judged on the holdout rows (never fitted).
    oos = oos_lib.evaluate(fits[primary.key], t.rows, note is None, t.holdout)
    checks.append(checks_lib.out_of_sample_check(oos))
    summ = summary.summary_object(fits[primary.key], checks, oos)
    comparison = estimates.convention_comparison(fits)
    tpp = estimates.tokens_per_param(fits)
    # The N the learning-rate rule is a function of: lr.json's own convention, else the sweep's.
    lr_conv = (t.lr or {}).get("convention") or t.info.get("flops_convention")
    lr_n_col = n_column_for(str(lr_conv or DEFAULT_FLOPS_CONVENTION))
    lr = t.lr and {**t.lr, "n_col": lr_n_col}
    t1 = time.perf_counter()
    print_fn(f"fits done in {t1 - t0:.0f} s; plotting ...")
    made = plots.make_plots(out_dir / "plots", fits, primary, lr, oos)
    t_plot = time.perf_counter() - t1

    doc = {
        "sweep": t.info.get("name", out_dir.name),
        "kind": t.info.get("kind", "grid"),
        "primary_convention": primary.key,
        "summary": summ,
        "sensitivity": uncertainty.document(fits[primary.key]),
        "rows": {
            "main": len(t.main),
            "all": len(t.rows),
            "curve_points": len(t.curves),
            "holdout": len(oos["runs"]),
        },
        "conventions": {k: summary.fits_json(v) for k, v in fits.items()},
        "convention_comparison": comparison,
        "tokens_per_parameter": tpp,
        "seed_spread": spread,
        "parametric_noise": {"rel_std": noise, "source": noise_src},
        "wsd_vs_cosine": cosine,
        "epochs": tables.epochs(out_dir, t.main),
        # The list the report has always written; `summary.checks` is the same, as name/pass.
        "checks": [
            {"check": c["name"], "result": checks_lib.verdict(c), "detail": c["detail"]}
            for c in checks
        ],
        "learning_rate": lr,
        "lr_used": tables.lr_used(t.lr, t.main, lr_n_col) if t.lr else [],
        "plots": made,
        "notes": t.notes,
    }
    md = markdown.render(doc, fits, primary, summ, t.info, n_boot, out_dir.name)
    timing = {"fits": t_fit, "plots": t_plot, "total": time.perf_counter() - t0}
    doc["timing_s"] = timing
    atomic_write(
        out_dir / "fit.json", json.dumps(summary.clean(doc), indent=1, allow_nan=False) + "\n"
    )
    atomic_write(out_dir / "report.md", md)
    res = _key_numbers(out_dir, fits, primary, checks, doc)
    for line in summary.console_lines(res, summ, comparison, res["errors"], timing):
        print_fn(line)
    return res


def _fit_conventions(
    t: tables.SweepTables,
    primary: Convention,
    isoflop: bool,
    noise: float,
    print_fn,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, ConventionFit]:
    """Every convention's fits (`isoflop`: the primary convention's rows are IsoFLOP sets),
    the primary's here and the others in child processes; keyed in CONVENTIONS' order."""
    order = [primary] + [c for c in CONVENTIONS if c != primary]
    jobs = [
        (c, (t.main, t.curves), {"primary": c == primary, "isoflop_rows": isoflop and c == primary,
                                 "noise": noise, "n_boot": n_boot, "seed": seed})
        for c in order
    ]  # fmt: skip
    print_fn(
        f"fitting {len(t.main)} runs under {len(jobs)} conventions (approaches 1-3 and Kaplan, "
        f"{n_boot} bootstrap resamples each) ..."
    )
    done = fit_all(jobs, N_CHILDREN)
    return {c.key: done[c.key] for c in CONVENTIONS}


def _key_numbers(
    out_dir: Path,
    fits: dict[str, ConventionFit],
    primary: Convention,
    checks: list[dict],
    doc: dict,
) -> dict:
    """What write_report returns: the key numbers, and the pieces of fit.json (`doc`) that
    callers read."""
    cosine, spread = doc["wsd_vs_cosine"], doc["seed_spread"]
    res = summary.key_numbers(fits, primary, checks)
    res.update(
        summary=doc["summary"], convention_comparison=doc["convention_comparison"],
        tokens_per_parameter=doc["tokens_per_parameter"], report=str(out_dir / "report.md"),
        fit_json=str(out_dir / "fit.json"), plots=doc["plots"], checks=checks,
        seed_spread=spread, wsd_vs_cosine=cosine, epochs=doc["epochs"],
        errors={k: list(v.errors) for k, v in fits.items()}, timing_s=doc["timing_s"],
    )  # fmt: skip
    if cosine:
        res["mean_cosine_minus_wsd"] = sum(c["diff_cosine_minus_wsd"] for c in cosine) / len(cosine)
    if spread:
        res["seed_std"] = spread["std"]
    return res
