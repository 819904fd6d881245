"""Fitting the conventions at the same time, in child processes.

The fits are independent, and their L-BFGS loops are many small numpy operations that hold
the GIL, so threads mostly take turns. A child process (a plain interpreter running
`fit_worker`, ~2 s to import, overlapped with the fit here) runs truly in parallel; not
multiprocessing, whose spawn would re-run the caller's main script (and pickles). Jobs and fits
travel as files of lm.scaling.report.exchange, which hold no pickle. Where no child can be
started or it fails, the fit is done here instead. The numbers are the same either way.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from lm.scaling.report import exchange
from lm.scaling.report.conventions import Convention
from lm.scaling.report.fits import ConventionFit, fit_convention

_WORKER = "import sys; from lm.scaling.report.parallel import fit_worker; fit_worker(*sys.argv[1:])"


def fit_worker(in_path: str, out_path: str) -> None:
    """Child-process side of `fit_all`: a list of (convention, arguments, keywords) in, the
    list of their fits out (both `exchange` files). One child fits its conventions one after
    another, so they share its compiled programs (the approach-3 objective compiles once per
    data shape)."""
    jobs = exchange.load(in_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = [fit_convention(c, *args, **kw) for c, args, kw in jobs]
    exchange.dump(out, out_path)


def fit_all(
    jobs: list[tuple[Convention, tuple, dict[str, Any]]], n_children: int = 1
) -> dict[str, ConventionFit]:
    """fit_convention(conv, *args, **kw) for every job, keyed by convention key: the first job
    here, the others shared out over up to `n_children` child processes meanwhile."""
    first, rest = jobs[0], jobs[1:]
    n_children = max(0, min(n_children, len(rest)))
    shares = [rest[i::n_children] for i in range(n_children)]
    fits: dict[str, ConventionFit] = {}
    with tempfile.TemporaryDirectory(prefix="lm-fit-") as tmp:
        children = []
        for i, share in enumerate(shares):
            inp, outp = Path(tmp) / f"{i}.in.npz", Path(tmp) / f"{i}.out.npz"
            exchange.dump(share, inp)
            cmd = [sys.executable, "-c", _WORKER, str(inp), str(outp)]
            try:
                children.append((share, subprocess.Popen(cmd), outp))
            except OSError:
                children.append((share, None, outp))  # fitted below, here
        try:
            c, args, kw = first
            fits[c.key] = fit_convention(c, *args, **kw)
            for share, proc, outp in children:
                if proc is not None and proc.wait() == 0 and outp.is_file():
                    done = exchange.load(outp)
                else:
                    done = [fit_convention(c, *args, **kw) for c, args, kw in share]
                for f in done:
                    fits[f.convention.key] = f
        finally:
            for _, proc, _ in children:
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return fits
