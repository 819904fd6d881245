"""The fitters' input: `Runs` (validated, read-only columns with optional run labels),
`FitError` (bad input, a one-line message naming the culprit), and `read_runs`, which reads
them from a CSV."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class FitError(ValueError):
    """Bad input for a fit; the message is one line naming the culprit."""


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def _frozen_labels(a: Any) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class Runs:
    """One row per (run, checkpoint): model size N, tokens D, loss L, compute C (all > 0), and
    optionally `run`, a label per row naming the training run it comes from (rows of one run
    are points of one loss curve; approach 1 smooths each curve and its bootstrap resamples
    whole runs). `run` is None when unknown: every row is then treated as its own run."""

    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    C: np.ndarray
    run: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls, N: Any, D: Any, L: Any, C: Any | None = None, run: Any | None = None
    ) -> Runs:
        """Validate and freeze; C defaults to 6ND (Kaplan et al. 2020, sec. 2.1). `run` may hold
        any hashable labels (strings, integers)."""
        cols = {"N": N, "D": D, "loss": L}
        if C is not None:
            cols["C"] = C
        arrs = {}
        for name, v in cols.items():
            a = np.asarray(v, dtype=np.float64)
            if a.ndim != 1:
                raise FitError(f"column {name!r} must be one-dimensional, got shape {a.shape}")
            bad = np.flatnonzero(~np.isfinite(a) | (a <= 0))
            if bad.size:
                i = int(bad[0])
                raise FitError(f"column {name!r} row {i}: value {a[i]!r} must be finite and > 0")
            arrs[name] = a
        lengths = {name: a.size for name, a in arrs.items()}
        labels = None
        if run is not None:
            labels = np.asarray(run)
            if labels.ndim != 1:
                raise FitError(f"column 'run' must be one-dimensional, got shape {labels.shape}")
            lengths["run"] = labels.size
            try:
                np.unique(labels)
            except TypeError:
                raise FitError("run labels must be all strings or all numbers") from None
        if len(set(lengths.values())) != 1:
            raise FitError(f"columns have different lengths: {lengths}")
        n, d = arrs["N"], arrs["D"]
        c = arrs["C"] if "C" in arrs else 6.0 * n * d
        return cls(
            _frozen(n),
            _frozen(d),
            _frozen(arrs["loss"]),
            _frozen(c),
            None if labels is None else _frozen_labels(labels),
        )

    def __len__(self) -> int:
        return int(self.N.size)

    def take(self, idx: Any) -> Runs:
        idx = np.asarray(idx)
        return Runs(
            _frozen(self.N[idx]),
            _frozen(self.D[idx]),
            _frozen(self.L[idx]),
            _frozen(self.C[idx]),
            None if self.run is None else _frozen_labels(self.run[idx]),
        )

    def with_loss(self, L: Any) -> Runs:
        """The same rows with losses replaced (smoothed, or perturbed by a bootstrap)."""
        return dataclasses.replace(self, L=_frozen(L))

    def run_ids(self) -> np.ndarray:
        """Integer run index per row (0..n_runs-1, in order of first label); each row its own
        run when there are no labels."""
        if self.run is None:
            return np.arange(len(self))
        _, first, inv = np.unique(self.run, return_index=True, return_inverse=True)
        # np.unique sorts labels; renumber by first appearance so ids follow the input's order.
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        return rank[inv.ravel()]


def as_runs(runs: Runs | Mapping[str, Any]) -> Runs:
    """`runs` itself, or a mapping with keys N, D, L (and optionally C, run) validated
    into Runs."""
    if isinstance(runs, Runs):
        return runs
    return Runs.from_arrays(runs["N"], runs["D"], runs["L"], runs.get("C"), runs.get("run"))


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
    if not path.is_file():
        raise FitError(f"runs file not found: {path}")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FitError(f"cannot read {path}: {e}") from None
    if not header:
        raise FitError(f"{path} is empty (no header row)")
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
            raise FitError(f"column {col!r} ({flag}) not in {path}; columns: {', '.join(header)}")
    if not rows:
        raise FitError(f"{path} has a header but no data rows")
    if "group" in header:
        # A sweep's results.csv also holds its LR-sweep runs, extra seeds, cosine controls and
        # out-of-sample (holdout) runs: other learning rates, repeats of one point, and runs kept
        # out of every fit to test it, not members of the scaling family.
        kept = [r for r in rows if (r.get("group") or "").strip() in ("", "main")]
        if not kept:
            raise FitError(f"{path}: no rows with group 'main' (or empty)")
        rows = kept
    cols = [n_col, d_col, loss_col] + ([c_col] if c_col else [])
    values: dict[str, list[float]] = {c: [] for c in cols}
    labels: list[str] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        row = {(k or "").strip(): v for k, v in row.items()}
        if run_col:
            label = (row.get(run_col) or "").strip()
            if not label:
                raise FitError(f"{path} line {line}, column {run_col!r}: empty run label")
            labels.append(label)
        for c in cols:
            raw = (row.get(c) or "").strip()
            try:
                v = float(raw)
            except ValueError:
                raise FitError(
                    f"{path} line {line}, column {c!r}: {raw!r} is not a number"
                ) from None
            if not (math.isfinite(v) and v > 0):
                raise FitError(
                    f"{path} line {line}, column {c!r}: {raw} must be a positive finite number"
                )
            values[c].append(v)
    return Runs.from_arrays(
        values[n_col],
        values[d_col],
        values[loss_col],
        values[c_col] if c_col else None,
        labels if run_col else None,
    )
