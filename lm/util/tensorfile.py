"""Reading a safetensors file's header without trusting it (named apart from the `safetensors`
package, which writes such files): the one reader behind model files
(`lm export`, lm.inference.numpy_runner) and Hugging Face checkpoints (lm.interop.hf).

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the raw
little-endian tensor bytes, offsets counted from the end of the header. Every size, offset and
dtype is checked against the file before any tensor is read, so a truncated, damaged or foreign
file is a `SafetensorsError` with a one-line reason (the caller adds the path), never a crash
or a read out of bounds. Numpy only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import BinaryIO, NamedTuple

import numpy as np

# safetensors' dtype names -> numpy's (bfloat16 read as its raw 16 bits)
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "U8": "u1"}


class SafetensorsError(ValueError):
    """Not a readable safetensors file; the message is one line, without the path."""


class Tensor(NamedTuple):
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]
    begin: int  # byte offsets from the start of the data
    end: int


class Header(NamedTuple):
    metadata: dict | None  # "__metadata__", when the file has one
    tensors: dict[str, Tensor]
    data_start: int  # where the tensor bytes begin in the file


def _ints(x, n: int | None = None) -> bool:
    ok = isinstance(x, list) and all(type(i) is int and i >= 0 for i in x)
    return ok and (n is None or len(x) == n)


def read_header(f: BinaryIO, size: int, dtypes: Mapping[str, str] = DTYPES) -> Header:
    """The header of the file open as `f`, of `size` bytes, every tensor's bytes inside it and
    of a dtype among `dtypes`."""
    head = f.read(8)
    n = int.from_bytes(head, "little")
    if len(head) < 8 or n > size - 8:
        raise SafetensorsError(f"header length {n} does not fit in {size} bytes: truncated or "
                               "foreign")  # fmt: skip
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (ValueError, RecursionError):
        raise SafetensorsError("the header is not safetensors JSON") from None
    if not isinstance(header, dict):
        raise SafetensorsError("the header is not a JSON object")
    meta = header.pop("__metadata__", None)
    tensors = {name: _entry(name, info, size - 8 - n, dtypes) for name, info in header.items()}
    return Header(meta, tensors, 8 + n)


def _entry(name: str, info, data_size: int, dtypes: Mapping[str, str]) -> Tensor:
    if not isinstance(info, dict):
        raise SafetensorsError(f"tensor {name!r}: malformed shape or data_offsets")
    if str(info.get("dtype")) not in dtypes:
        raise SafetensorsError(f"tensor {name!r}: dtype {info.get('dtype')!r} is not one of "
                               f"{', '.join(dtypes)}")  # fmt: skip
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not (_ints(shape) and _ints(offsets, 2)) or offsets[0] > offsets[1]:
        raise SafetensorsError(f"tensor {name!r}: malformed shape or data_offsets")
    begin, end = offsets
    nbytes = math.prod(shape) * np.dtype(dtypes[info["dtype"]]).itemsize
    if end > data_size or end - begin != nbytes:
        raise SafetensorsError(f"tensor {name!r}: bytes {begin}..{end} do not fit its shape or the "
                               "file")  # fmt: skip
    return Tensor(info["dtype"], tuple(shape), begin, end)


def as_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """A tensor's values as float32; bfloat16 is the top half of a float32."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)
