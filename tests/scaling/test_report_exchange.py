"""The files the report's child processes read jobs from and write fits to
(lm.scaling.report.exchange): what comes back is what went in, type for type and bit for bit,
and reading a file never unpickles or builds a class it was not told about."""

from __future__ import annotations

import dataclasses
import io
import math
import struct

import numpy as np
import pytest

from lm.scaling import fit as F
from lm.scaling.report import exchange, parallel
from lm.scaling.report.conventions import CONVENTIONS
from lm.scaling.report.fits import ConventionFit, fit_convention


def assert_identical(a, b, path="$"):
    """Same types all the way down, floats and arrays to the bit, dict keys in order, arrays'
    read-only flags; dataclasses field by field."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, np.ndarray | np.generic):
        assert (a.dtype, a.shape) == (b.dtype, b.shape) and a.tobytes() == b.tobytes(), path
        if isinstance(a, np.ndarray):
            assert a.flags.writeable == b.flags.writeable, path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_identical(u, v, f"{path}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_identical(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b) or math.isnan(a) and math.isnan(b)
    else:
        assert a == b, (path, a, b)


def _fit() -> ConventionFit:
    """A ConventionFit with every kind of value a real one holds, and a few it might."""
    runs = F.Runs.from_arrays(
        [1e6, 2e6, 4e6], [1e8, 2e8, 4e8], [3.0, 2.9, 2.8], run=["a", "b", "c"]
    )
    res = F.FitResult(
        "3", "L = E + A/N^alpha", 3, {"E": 1.69, "alpha": -0.0, "G": math.inf},
        {"status_counts": {"ok": 3}, "mixed": [1, 2.5, None, True, "x"]},
        {"theta": {"a": np.float64(6.1)}, "budgets": [{"C": 1e21, "interior": True}]},
        ci95={"E": (1.6, 1.8), "alpha": (math.nan, -math.inf)},
        bootstrap={"n_boot": 2, "ints": np.arange(3, dtype=np.int32)},
    )  # fmt: skip
    out = ConventionFit(CONVENTIONS[1], False, {"N": np.geomspace(1, 8, 4), "D": np.zeros(0)})
    out.results.update({"3": res, "1": None})
    out.errors.append("approach 1: no training curves")
    out.samples["3"] = {"E": np.array([1.6, 1.7]), "alpha": np.array([np.nan, 0.3])}
    out.curve_runs = runs
    out.holdout_largest_N["3"] = {"rel_errors": [0.01, -0.02], 1: "an int key", "$": "a tag"}
    out.a2_method = "the sweep's own IsoFLOP rows"
    return out


def test_a_fit_comes_back_exactly(tmp_path):
    fit = _fit()
    path = tmp_path / "fits.npz"
    exchange.dump([fit, (fit.convention, {"k": 1})], path)
    back = exchange.load(path)
    assert_identical(back, [fit, (fit.convention, {"k": 1})])
    assert not back[0].curve_runs.L.flags.writeable  # Runs stay read-only
    assert list(tmp_path.iterdir()) == [path]  # written by rename: no temporary file left


def test_what_cannot_travel_without_pickle_is_refused(tmp_path):
    class Other:
        pass

    for bad in (Other(), np.array([{"a": 1}], dtype=object), {1, 2}, F.Bootstrap({}, {}, {})):
        with pytest.raises(TypeError):
            exchange.dump([bad], tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())


def test_reading_builds_only_the_listed_classes_and_never_unpickles(tmp_path):
    path = tmp_path / "x.npz"
    exchange.dump({"fit": F.FitResult("2", "", 1, {})}, path)
    with np.load(path) as z:
        files = {k: z[k] for k in z.files}
    tree = files["tree"].tobytes().replace(b'"FitResult"', b'"Popen"')
    np.savez(path, **{**files, "tree": np.frombuffer(tree, np.uint8)})
    with pytest.raises(KeyError, match="Popen"):
        exchange.load(path)
    # An array of objects is a pickle inside the npz: np.load refuses it.
    buf = io.BytesIO()
    np.savez(buf, tree=np.frombuffer(b"[]", np.uint8), a0=np.array([object()], dtype=object))
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="pickle"):
        exchange.load(path)


def test_the_child_side_writes_what_fitting_here_gives(tmp_path):
    # No usable rows: fit_convention returns at once, so this checks the plumbing, both ways.
    jobs = [(c, ([], []), {"primary": False, "isoflop_rows": False, "noise": 0.01,
                           "n_boot": 0, "seed": 0}) for c in CONVENTIONS]  # fmt: skip
    inp, outp = tmp_path / "in.npz", tmp_path / "out.npz"
    exchange.dump(jobs, inp)
    parallel.fit_worker(str(inp), str(outp))
    here = [fit_convention(c, *args, **kw) for c, args, kw in jobs]
    got = exchange.load(outp)
    for f in (*here, *got):
        f.timing.clear()
    assert_identical(got, here)
    assert got[0].errors == ["no usable main rows: nothing to fit"]
