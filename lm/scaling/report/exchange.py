"""The files a report's child process reads its jobs from and writes its fits to.

Neither side unpickles: a file from a temporary directory another process can write to must
not be able to run code when read. One .npz holds every array (read with allow_pickle=False)
and, as a string, the JSON of everything else, arrays replaced by their names. What comes back
is what went in, bit for bit and type for type: floats round-trip through their repr, numpy
scalars and arrays keep their dtypes (and arrays their read-only flag), tuples stay tuples, and
the dataclasses are rebuilt field by field, only those of `CLASSES`.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from lm.scaling import fit as F
from lm.scaling.report.conventions import Convention
from lm.scaling.report.fits import ConventionFit
from lm.util.files import atomic_write

# The dataclasses a file may name: everything a job or a ConventionFit holds.
CLASSES: dict[str, type] = {c.__name__: c for c in (Convention, ConventionFit, F.FitResult, F.Runs)}
TAG = "$"  # the key that marks an encoded value; a dict holding it is encoded as pairs
TREE = "tree"  # the npz entry holding the JSON, as UTF-8 bytes


def dump(obj: Any, path: str | Path) -> None:
    """Write `obj` to `path` (atomically); TypeError if it holds anything but None, bool, int,
    float, str, list, tuple, dict, numpy arrays (not of objects) and scalars, or `CLASSES`."""
    arrays: dict[str, np.ndarray] = {}
    tree = json.dumps(_encode(obj, arrays)).encode("utf-8")
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **{TREE: np.frombuffer(tree, np.uint8)}, **arrays)
    atomic_write(path, buf.getvalue())


def load(path: str | Path) -> Any:
    """What `dump` wrote to `path`."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return _decode(json.loads(arrays.pop(TREE).tobytes().decode("utf-8")), arrays)


def _encode(x: Any, arrays: dict[str, np.ndarray]) -> Any:
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is list:
        return [_encode(v, arrays) for v in x]
    if type(x) is tuple:
        return {TAG: "tuple", "items": [_encode(v, arrays) for v in x]}
    if type(x) is dict:
        if TAG not in x and all(type(k) is str for k in x):
            return {k: _encode(v, arrays) for k, v in x.items()}
        pairs = [[_encode(k, arrays), _encode(v, arrays)] for k, v in x.items()]
        return {TAG: "dict", "items": pairs}
    if type(x) is np.ndarray or isinstance(x, np.generic):
        a = np.asarray(x)
        if a.dtype.hasobject:
            raise TypeError("an array of Python objects cannot be sent without pickling it")
        name = f"a{len(arrays)}"
        arrays[name] = a
        if isinstance(x, np.generic):
            return {TAG: "scalar", "name": name}
        return {TAG: "array", "name": name, "writeable": bool(x.flags.writeable)}
    cls = type(x)
    if dataclasses.is_dataclass(x) and CLASSES.get(cls.__name__) is cls:
        fields = {f.name: _encode(getattr(x, f.name), arrays) for f in dataclasses.fields(x)}
        return {TAG: "dataclass", "class": cls.__name__, "fields": fields}
    raise TypeError(f"cannot send a {cls.__module__}.{cls.__qualname__} to a child process")


def _decode(x: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(x, list):
        return [_decode(v, arrays) for v in x]
    if not isinstance(x, dict):
        return x
    tag = x.get(TAG)
    if tag is None:
        return {k: _decode(v, arrays) for k, v in x.items()}
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in x["items"])
    if tag == "dict":
        return {_decode(k, arrays): _decode(v, arrays) for k, v in x["items"]}
    if tag == "scalar":
        return arrays[x["name"]][()]
    if tag == "array":
        a = arrays[x["name"]]
        a.setflags(write=x["writeable"])
        return a
    if tag == "dataclass":
        cls = CLASSES[x["class"]]  # a KeyError for any class not listed: nothing else is built
        return cls(**{k: _decode(v, arrays) for k, v in x["fields"].items()})
    raise ValueError(f"unknown tag {tag!r} in a child process's file")
