"""lm.util.files.atomic_write: the old file or the whole new one, never a part, and no stray
temporary file; two writers never share a temporary name. lm.util.tensorfile: headers checked
against the file, against the `safetensors` package as the independent writer."""

import io
import multiprocessing
import os

import numpy as np
import pytest
import safetensors.numpy

from lm.util import tensorfile as st
from lm.util.files import atomic_write, temporary_name


def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    p = tmp_path / "config.yaml"
    atomic_write(p, "a: 1\n")
    atomic_write(p, b"a: 2\n")
    assert p.read_text() == "a: 2\n"
    assert [q.name for q in tmp_path.iterdir()] == ["config.yaml"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "done.json"
    atomic_write(p, "old")

    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write(p, "new")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["done.json"]


def _names(path, n, q):
    q.put([temporary_name(path).name for _ in range(n)])


def test_temporary_names_differ_across_calls_and_processes(tmp_path):
    p = tmp_path / "peak_flops.json"
    q = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_names, args=(p, 50, q))
             for _ in range(2)]  # fmt: skip
    for pr in procs:
        pr.start()
    names = q.get(timeout=60) + q.get(timeout=60)
    for pr in procs:
        pr.join()
    assert len(set(names)) == 100
    assert all(n.startswith(".peak_flops.json.") and n.endswith(".tmp") for n in names)


def _file(tensors: dict, meta=None) -> tuple[io.BytesIO, int]:
    data = safetensors.numpy.save(tensors, metadata=meta)
    return io.BytesIO(data), len(data)


def test_read_header_agrees_with_the_safetensors_package():
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}
    f, size = _file(tensors, {"format": "x"})
    h = st.read_header(f, size)
    assert h.metadata == {"format": "x"}
    assert set(h.tensors) == {"a", "b"}
    for name, t in h.tensors.items():
        f.seek(h.data_start + t.begin)
        raw = np.frombuffer(f.read(t.end - t.begin), st.DTYPES[t.dtype]).reshape(t.shape)
        np.testing.assert_array_equal(raw, tensors[name])


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda b: b[:20], "truncated or foreign"),
        (lambda b: (5).to_bytes(8, "little") + b"[1,2]", "not a JSON object"),
        (lambda b: (3).to_bytes(8, "little") + b"{{{", "not safetensors JSON"),
        (lambda b: b[:-4], "do not fit"),
        (lambda b: b.replace(b'"F32"', b'"I64"'), "is not one of"),
    ],
)
def test_a_damaged_header_is_one_line(damage, why):
    good = safetensors.numpy.save({"w": np.zeros((2, 2), np.float32)})
    bad = damage(good)
    with pytest.raises(st.SafetensorsError, match=why) as e:
        st.read_header(io.BytesIO(bad), len(bad))
    assert "\n" not in str(e.value)


def test_bfloat16_widens_exactly():
    x = np.asarray([1.0, -2.5, 3.140625], np.float32)  # all exact in bfloat16
    raw = (x.view(np.uint32) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(st.as_float32(raw, "BF16"), x)
