"""The report's figures, each as PNG (for report.md) and SVG (for print)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lm.scaling import fit as F
from lm.scaling.report.allocation import optimal_allocation
from lm.scaling.report.conventions import CONVENTIONS, Convention
from lm.scaling.report.fits import INTERPOLATED, ConventionFit
from lm.scaling.report.tables import lr_rule

COLOURS = ("C0", "C1", "C2")  # one per convention, in CONVENTIONS order
MARKERS = ("o", "^", "s")
LR_PLOT = "lr_sweep"


def make_plots(
    plot_dir: Path,
    fits: dict[str, ConventionFit],
    primary: Convention,
    lr: dict | None,
    oos: dict | None = None,
) -> dict[str, str]:
    """Every figure; returns name -> caption. `oos`: the out-of-sample test
    (lm.scaling.report.out_of_sample.evaluate), drawn on the loss-vs-compute plot."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def save(fig, name, caption):
        for ax in fig.axes:
            _log_ticks(ax)
        for ext in ("png", "svg"):
            fig.savefig(plot_dir / f"{name}.{ext}", dpi=100)
        made[name] = caption

    pf = fits[primary.key]
    if pf.data["N"].size:
        _loss_vs_compute(save, pf, oos if oos and oos.get("runs") else None)
        _isoflop(save, fits, primary)
        _loss_vs_n_d(save, fits, pf)
        _approach3(save, fits, pf)
        _compute_optimal(save, fits)
    if lr is not None:
        _lr_sweep(save, lr)
    return made


def _figure(figsize):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=figsize, layout="constrained")


def _size_colours(N: np.ndarray):
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    norm = LogNorm(N.min(), N.max() * (1.0001 if N.min() == N.max() else 1))
    return colormaps["viridis"], norm


def _colorbar(fig, ax, cmap, norm, label):
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=label)


def _loss_vs_compute(save, f: ConventionFit, oos: dict | None) -> None:
    conv, d = f.convention, f.data
    runs = oos["runs"] if oos else []
    cmap, norm = _size_colours(np.concatenate([d["N"], [r["N"] for r in runs]]))
    fig = _figure((7, 5))
    ax = fig.add_subplot()
    cr = f.curve_runs
    if cr is not None:
        labels = cr.run if cr.run is not None else np.zeros(len(cr))
        for lab in np.unique(labels):
            i = np.flatnonzero(labels == lab)
            i = i[np.argsort(cr.C[i])]
            ax.plot(cr.C[i], cr.L[i], color=cmap(norm(cr.N[i[0]])), lw=0.7, alpha=0.5)
    ax.scatter(d["C"], d["L"], c=d["N"], cmap=cmap, norm=norm, edgecolor="k", zorder=3, s=28,
               label="final val loss (main runs)")  # fmt: skip
    Cg = np.geomspace(
        d["C"].min() / 2, max(d["C"].max() * 2, oos["C_out"] * 1.5 if oos else 0), 100
    )
    k = f.get("kaplan")
    if k is not None and math.isfinite(k.params["C_c"]):
        p = k.params
        ax.plot(Cg, (p["C_c"] / Cg) ** p["alpha_C"], "r-", lw=1.5,
                label=f"Kaplan L(C), alpha_C = {p['alpha_C']:.3f}")  # fmt: skip
    r1 = f.get("1")
    env = r1.details.get("envelope") if r1 is not None else None
    if env:
        ax.plot([e["C"] for e in env], [e["loss"] for e in env], "r.", ms=3,
                label="approach 1 envelope (training curves)")  # fmt: skip
    r3 = f.get("3")
    if r3 is not None and f.flops_law:
        No, Do = optimal_allocation(r3.params, Cg, f.flops_law["k"], f.flops_law["p"])
        ax.plot(Cg, F.approach3_predict(r3.params, No, Do), "k--", lw=1,
                label="approach 3 L(N_opt, D_opt)")  # fmt: skip
    if oos:
        _out_of_sample(ax, oos, cmap, norm)
    _colorbar(fig, ax, cmap, norm, conv.n_col)
    ax.set(xscale="log", yscale="log", xlabel=f"{conv.c_col} (FLOPs)", ylabel="loss (nats/token)",
           title=f"Loss vs compute, {conv.tag}: training curves coloured by N")  # fmt: skip
    _legend(ax, 7)
    held = (" The holdout runs at C_out (diamonds, never fitted) and each approach's prediction "
            "there from the main runs (approach 3 with its bootstrap 95% interval)."
            if oos else "")  # fmt: skip
    save(fig, "loss_vs_compute", f"Loss vs compute ({conv.c_col}): training curves (train loss) "
         f"coloured by N, final validation losses, and fitted frontiers.{held}")  # fmt: skip


OOS_MARKERS = {"approach1": ("^", "C1"), "approach2": ("s", "C2"), "approach3": ("*", "k")}


def _out_of_sample(ax, oos: dict, cmap, norm) -> None:
    """The holdout runs' losses at C_out and each approach's predicted loss there: approach 3
    with its bootstrap interval as an error bar, approaches 1 and 2 as points with the L*(C)
    they were read off (dotted) from their fitted range to C_out."""
    runs, c_out = oos["runs"], oos["C_out"]
    ax.scatter([r["C"] for r in runs], [r["loss"] for r in runs], c=[r["N"] for r in runs],
               cmap=cmap, norm=norm, marker="D", s=44, edgecolor="r", linewidth=1.2, zorder=5,
               label="holdout runs at C_out (not fitted)")  # fmt: skip
    for key, e in oos["approaches"].items():
        if not e or "loss" not in e:
            continue
        mk, col = OOS_MARKERS[key]
        ci = e.get("loss_ci95")
        yerr = None
        if ci and all(x is not None and math.isfinite(x) for x in ci):
            yerr = [[max(e["loss"] - ci[0], 0.0)], [max(ci[1] - e["loss"], 0.0)]]
        ax.errorbar([c_out], [e["loss"]], yerr=yerr, fmt=mk, color=col, ms=9, mfc="none",
                    capsize=3, zorder=6, label=f"approach {key[-1]} predicted "
                    f"({e['rel_error']:+.1%})")  # fmt: skip
        fr = e.get("frontier")
        if fr:
            x = np.geomspace(fr["C_range"][0], c_out, 50)
            ax.plot(x, F.loss_frontier(fr, x), ":", color=col, lw=1)


def _budget_rows(pts: F.Runs, labels: np.ndarray, C: float) -> np.ndarray:
    """Rows of the compute group whose C is nearest the budget's."""
    return labels == labels[np.argmin(np.abs(np.log(pts.C / C)))]


def _isoflop(save, fits: dict[str, ConventionFit], primary: Convention) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    if all(f.get("2") is None for f in fits.values()):
        return
    fig = _figure((5 * len(CONVENTIONS), 4.5))
    for j, c in enumerate(CONVENTIONS):
        f = fits[c.key]
        ax = fig.add_subplot(1, len(CONVENTIONS), j + 1)
        r, pts = f.get("2"), f.a2_runs
        how = "interpolated" if f.a2_method == INTERPOLATED else "sweep rows"
        ax.set(xscale="log", xlabel=c.n_col, ylabel="loss",
               title=f"{c.title}\n({how}{', primary' if c == primary else ''})")  # fmt: skip
        ax.title.set_fontsize(8)
        if r is None or pts is None:
            ax.text(0.5, 0.5, "not fitted", transform=ax.transAxes, ha="center")
            continue
        budgets = r.details.get("budgets", [])
        dropped = r.details.get("dropped_budgets", [])
        every = [b["C"] for b in budgets + dropped]
        bn = LogNorm(min(every), max(every) * 1.0001)
        labels = F.compute_budgets(pts.C)
        for b in dropped:
            g = _budget_rows(pts, labels, b["C"])
            ax.plot(pts.N[g], pts.L[g], "x", color="0.6", ms=5)
        if dropped:
            ax.plot([], [], "x", color="0.6", label="dropped budget")
        for b in budgets:
            g = _budget_rows(pts, labels, b["C"])
            col = colormaps["plasma"](0.85 * bn(b["C"]))
            ax.plot(pts.N[g], pts.L[g], "o", color=col, mfc="none", ms=5)
            if "curvature" in b:
                # The parabola only over the sizes it was fitted to: beyond them it says nothing.
                used = np.asarray(b.get("window_N", pts.N[g]), np.float64)
                x = np.linspace(np.log(used.min()), np.log(used.max()), 50)
                xv = math.log(b["N_opt"])
                ax.plot(np.exp(x), b["L_opt"] + b["curvature"] * (x - xv) ** 2, "-", color=col,
                        lw=1, label=f"C = {b['C']:.2g}")  # fmt: skip
            ax.plot(b["N_opt"], b["L_opt"], "*", color=col, ms=11, mec="k")
        _legend(ax, 6)
    save(fig, "isoflop", "IsoFLOP profiles, every convention: each budget's points (open "
         "circles; grey crosses: dropped budgets), the parabola in log N over the points it was "
         "fitted to, and its minimum (star)")  # fmt: skip


def _loss_vs_n_d(save, fits: dict[str, ConventionFit], pf: ConventionFit) -> None:
    fig = _figure((11, 4.5))
    axN, axD = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for c, col in zip(CONVENTIONS, COLOURS, strict=True):
        fd = fits[c.key].data
        best: dict[float, float] = {}
        for n, ll in zip(fd["N"], fd["L"], strict=True):
            if n not in best or ll < best[n]:
                best[n] = ll
        ns = np.array(sorted(best))
        axN.plot(fd["N"], fd["L"], ".", color=col, alpha=0.3)
        axN.plot(ns, [best[n] for n in ns], "o", color=col, label=f"best per size, {c.n_col}")
        k = fits[c.key].get("kaplan")
        if k is not None and math.isfinite(k.params["N_c"]):
            x = np.geomspace(ns.min() / 1.5, ns.max() * 1.5, 50)
            axN.plot(x, (k.params["N_c"] / x) ** k.params["alpha_N"], "-", color=col,
                     label=f"L(N) alpha_N = {k.params['alpha_N']:.3f}")  # fmt: skip
    axN.set(xscale="log", yscale="log", xlabel="N (parameters)", ylabel="loss",
            title="L(N): Kaplan fit to the best loss per size")  # fmt: skip
    _legend(axN, 7)
    d = pf.data
    cmap, norm = _size_colours(d["N"])
    largest: dict[float, tuple[float, float]] = {}
    for n, dd, ll in zip(d["N"], d["D"], d["L"], strict=True):
        if dd not in largest or n > largest[dd][0]:
            largest[dd] = (n, ll)
    ds = np.array(sorted(largest))
    axD.scatter(d["D"], d["L"], c=d["N"], cmap=cmap, norm=norm, s=14, alpha=0.6)
    axD.plot(ds, [largest[x][1] for x in ds], "ks", mfc="none", label="largest N per D")
    k = pf.get("kaplan")
    if k is not None and math.isfinite(k.params["D_c"]):
        x = np.geomspace(ds.min() / 1.5, ds.max() * 1.5, 50)
        axD.plot(x, (k.params["D_c"] / x) ** k.params["alpha_D"], "k-",
                 label=f"L(D) alpha_D = {k.params['alpha_D']:.3f}")  # fmt: skip
    _colorbar(fig, axD, cmap, norm, pf.convention.n_col)
    axD.set(xscale="log", yscale="log", xlabel="D (tokens)", ylabel="loss",
            title="L(D): Kaplan fit to the largest size per D")  # fmt: skip
    _legend(axD, 7)
    save(fig, "loss_vs_N_D", "L(N) (every convention) and L(D) with Kaplan power-law fits")


def _approach3(save, fits: dict[str, ConventionFit], pf: ConventionFit) -> None:
    if all(f.get("3") is None for f in fits.values()):
        return
    d = pf.data
    cmap, norm = _size_colours(d["N"])
    fig = _figure((5.5, 5))
    ax = fig.add_subplot()
    for c, mk in zip(CONVENTIONS, MARKERS, strict=True):
        f = fits[c.key]
        r = f.get("3")
        if r is None:
            continue
        fd = f.data
        pred = F.approach3_predict(r.params, fd["N"], fd["D"])
        rms = r.stats["rms_log_residual"]
        ax.scatter(fd["L"], pred, c=d["N"], cmap=cmap, norm=norm, marker=mk, edgecolor="k",
                   s=26, label=f"{c.tag} rms log resid. {rms:.4f}")  # fmt: skip
    lo, hi = d["L"].min() * 0.98, d["L"].max() * 1.02
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set(xlabel="actual final loss", ylabel="approach 3 prediction",
           title="Approach 3: predicted vs actual")  # fmt: skip
    _colorbar(fig, ax, cmap, norm, pf.convention.n_col)
    _legend(ax, 7)
    save(fig, "approach3_pred_vs_actual", "Approach 3 fit: predicted vs actual final loss")


def _compute_optimal(save, fits: dict[str, ConventionFit]) -> None:
    fig = _figure((11, 4.5))
    axes = (fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2))
    for c, col in zip(CONVENTIONS, COLOURS, strict=True):
        f = fits[c.key]
        fd = f.data
        Cg = np.geomspace(fd["C"].min() / 2, fd["C"].max() * 2, 60)
        r1 = f.get("1")
        if r1 is not None:
            env = r1.details.get("envelope") or []
            for ax, key, ex in ((axes[0], "N", "a"), (axes[1], "D", "b")):
                ax.plot([e["C"] for e in env], [e[key] for e in env], ".", color=col, alpha=0.3,
                        ms=3)  # fmt: skip
                kk = r1.params[f"k_{key}"]
                ax.plot(Cg, kk * Cg ** r1.params[ex], "-", color=col, lw=1,
                        label=f"{c.tag} approach 1, {ex} = {r1.params[ex]:.3f}")  # fmt: skip
        r2 = f.get("2")
        if r2 is not None:
            b = r2.details.get("budgets", [])
            for ax, key, ex in ((axes[0], "N", "a"), (axes[1], "D", "b")):
                ax.plot([m["C"] for m in b], [m[f"{key}_opt"] for m in b], "s", color=col,
                        mfc="none")  # fmt: skip
                kk = r2.params[f"k_{key}"]
                ax.plot(Cg, kk * Cg ** r2.params[ex], ":", color=col, lw=1.2,
                        label=f"{c.tag} approach 2, {ex} = {r2.params[ex]:.3f}")  # fmt: skip
        r3 = f.get("3")
        if r3 is not None and f.flops_law and f.a3_effective:
            fl, e = f.flops_law, f.a3_effective
            No, Do = optimal_allocation(r3.params, Cg, fl["k"], fl["p"])
            axes[0].plot(Cg, No, "--", color=col, lw=1.5,
                         label=f"{c.tag} approach 3, a = {e['a']:.3f}")  # fmt: skip
            axes[1].plot(Cg, Do, "--", color=col, lw=1.5,
                         label=f"{c.tag} approach 3, b = {e['b']:.3f}")  # fmt: skip
    for ax, what in zip(axes, ("N_opt (parameters)", "D_opt (tokens)"), strict=True):
        ax.set(xscale="log", yscale="log", ylabel=what,
               xlabel="C (FLOPs), each convention's own")  # fmt: skip
        _legend(ax, 6)
    axes[0].set_title("Compute-optimal model size")
    axes[1].set_title("Compute-optimal data")
    save(fig, "compute_optimal", "N_opt(C) and D_opt(C): approaches 1-3 under every convention "
         "(" + "; ".join(f"{c.tag} {c.n_col}, {c.c_col}" for c in CONVENTIONS) + ")")  # fmt: skip


def _lr_sweep(save, lr: dict) -> None:
    pts = lr["points"]
    N = np.array([p["N"] for p in pts])
    cmap, norm = _size_colours(N)
    fig = _figure((7, 5))
    ax = fig.add_subplot()
    opt = {s["N"]: s["lr_opt"] for s in lr["per_size"]}
    for n in np.unique(N):
        mine = sorted((p for p in pts if p["N"] == n), key=lambda p: p["lr"])
        x = np.array([p["lr"] for p in mine])
        # Above the size's best: sizes differ in loss far more than rates do.
        y = np.array([p["loss"] for p in mine])
        y = y - y.min()
        se = np.array([p["loss_se"] or 0.0 for p in mine])
        col = cmap(norm(n))
        ax.errorbar(x, y, yerr=se, fmt="o-", color=col, ms=4, lw=1, capsize=2,
                    label=f"{lr.get('n_col', 'N')} = {n:.3g}")  # fmt: skip
        best = next((v for k, v in opt.items() if abs(k / n - 1) <= F.SIZE_TOL), None)
        if best is not None:
            yb = float(np.interp(math.log(best), np.log(x), y))
            ax.plot(best, yb, "*", color=col, ms=13, mec="k", zorder=4)
        rule = lr_rule(lr, float(n))
        if rule is not None:
            ax.axvline(rule, color=col, ls=":", lw=1)
    ax.plot([], [], "*", color="0.5", mec="k", ms=10, label="best lr per size")
    if lr.get("rule"):
        ax.plot([], [], ":", color="0.5", label="fitted rule's lr for the size")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss above the size's lowest (nats)",
           title="Learning-rate search: loss vs lr per size")  # fmt: skip
    _legend(ax, 7)
    save(fig, LR_PLOT, "Learning-rate search: loss (above each size's lowest) vs learning rate "
         "per size, each size's best lr (star) and the fitted rule's lr (dotted)")  # fmt: skip


def _legend(ax, fontsize: int) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend is only a warning
        ax.legend(fontsize=fontsize)


def _log_ticks(ax) -> None:
    """Readable log axes: loss axes (a fraction of a decade) get ticks at 1, 1.5, 2, 3, ...
    labelled plainly; wide axes get 1, 2, 5 per decade (1 past 3 decades); no minor labels,
    which matplotlib otherwise draws, overlapping, on axes spanning about one decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def label(v, _pos):
        if 1e-2 <= abs(v) < 1e4:
            return f"{v:g}"
        mantissa, exp = f"{v:.0e}".split("e")
        return f"{mantissa}e{int(exp)}"

    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or min(lim) <= 0:
            continue
        decades = math.log10(max(lim) / min(lim))
        subs = (1, 1.5, 2, 3, 4, 5, 6, 8) if decades < 1 else (1, 2, 5) if decades <= 3 else (1,)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FuncFormatter(label))
        axis.set_minor_formatter(NullFormatter())
