"""The sweep's control runs, which are not fitted: seeds (how noisy is one run's final loss?)
and separate cosine runs (does a WSD cooldown branch stand in for a finished run?)."""

from __future__ import annotations

import math

import numpy as np

FALLBACK_NOISE = 0.005  # relative loss noise for approach 2's parametric bootstrap, last resort


def seed_spread(rows: list[dict]) -> dict | None:
    """Final losses of the `seed` rows and the main row with the same (N, D)."""
    seeds = [r for r in rows if r["group"] == "seed"]
    if not seeds:
        return None
    N, D = seeds[0]["N"], seeds[0]["D"]
    same = [r for r in rows if r["N"] == N and r["D"] == D and r["group"] in ("main", "seed")]
    L = np.array([r["loss"] for r in same])
    std = float(np.std(L, ddof=1)) if L.size > 1 else math.nan
    out = {
        "N": N,
        "D": D,
        "names": [r["name"] for r in same],
        "losses": L.tolist(),
        "n": int(L.size),
        "mean": float(L.mean()),
        "std": std,
        "rel_std": std / float(L.mean()),
    }
    # Scale: the loss gap to the next size up at the same D, which the L(N) fit must resolve.
    bigger = sorted(
        (r for r in rows if r["group"] == "main" and r["D"] == D and r["N"] > N),
        key=lambda r: r["N"],
    )
    if bigger and math.isfinite(std):
        gap = out["mean"] - bigger[0]["loss"]
        out.update(next_size_N=bigger[0]["N"], gap_to_next_size=gap)
        out["std_over_gap"] = std / gap if gap > 0 else math.nan
    return out


def wsd_vs_cosine(rows: list[dict]) -> list[dict]:
    """Each separate cosine run next to the main (WSD) run of the same (N, D)."""
    out = []
    for c in (r for r in rows if r["group"] == "cosine"):
        m = next(
            (r for r in rows if r["group"] == "main" and r["N"] == c["N"] and r["D"] == c["D"]),
            None,
        )
        if m is None:
            continue
        out.append(
            {
                "N": c["N"],
                "D": c["D"],
                "wsd_name": m["name"],
                "cosine_name": c["name"],
                "loss_wsd": m["loss"],
                "loss_cosine": c["loss"],
                "diff_cosine_minus_wsd": c["loss"] - m["loss"],
                "wsd_branch_of": m.get("branch_of") or "",
            }
        )
    return sorted(out, key=lambda x: x["D"])


def parametric_noise(spread: dict | None, main: list[dict]) -> tuple[float, str]:
    """Relative run-to-run noise of a final loss, for approach 2's parametric bootstrap: the
    seed spread, else the eval's own standard error, else a stated guess."""
    if spread and math.isfinite(spread["std"]) and spread["std"] > 0:
        return spread["rel_std"], "seed-to-seed relative std"
    if any(r.get("loss_se") for r in main):
        noise = float(np.median([r["loss_se"] / r["loss"] for r in main if r.get("loss_se")]))
        return noise, "median eval standard error (no seed spread)"
    return FALLBACK_NOISE, "assumed (no seed spread, no eval standard error)"
