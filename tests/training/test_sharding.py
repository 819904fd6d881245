"""One sharded train step across (fake CPU) devices and processes gives the same losses."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from tiny import FAST_XLA_FLAGS

from lm.config import ConfigError, MeshConfig, ModelConfig
from lm.model import transformer
from lm.training import sharding

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "sharded_worker.py"
TOL = dict(rtol=2e-4, atol=2e-5)  # reductions split across devices sum in another order


def _overrides(tmp_path, *extra):
    return [
        "model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.n_kv_heads=2",
        "model.max_seq_len=32", "model.vocab_size=264", "preset=llama",
        "data.max_docs=300", f"data.cache_dir={tmp_path / 'cache'}",
        "train.seq_len=32", "train.batch_size=16", "train.steps=10", "train.log_every=1",
        "train.eval_every=10", "train.eval_windows=8", "train.ckpt_every=5",
        "train.steps_per_call=1", "train.peak_flops=1e11", *extra,
    ]  # fmt: skip


def _worker(runs: dict, devices: int, wait=True, **dist):
    """tests/sharded_worker.py on `devices` fake CPU devices: trains `runs` ({name: {"overrides",
    "run_dir", "stop_after"?}}) in turn in that one process; {name: losses} (from process 0)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA_FLAGS}".strip()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": flags}
    p = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps({"runs": runs, "devices": devices, **dist})],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return _result(p) if wait else p


def _result(p):
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[0][7:]) if lines else None


MESHES = {  # on 8 devices
    "data": ["mesh.data=8", "mesh.fsdp=1"],
    "fsdp": ["mesh.fsdp=8"],
    "fsdp_tensor": ["mesh.fsdp=4", "mesh.tensor=2"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The straight runs the tests compare with, each trained once: on 1 device, and on each of
    MESHES over 8 (one process for those, as their compiles dominate its time); that process
    also trains the fsdp_tensor run that test_save_on_8_devices_restore_on_1 stops at step 5."""
    tmp = tmp_path_factory.mktemp("sharding")
    one = _worker({"one": {"overrides": _overrides(tmp, "mesh.fsdp=1"), "run_dir": str(tmp / "1")}},
                  1, wait=False)  # fmt: skip
    eight = {name: {"overrides": _overrides(tmp, *mesh), "run_dir": str(tmp / name)}
             for name, mesh in MESHES.items()}  # fmt: skip
    eight["stopped"] = {**eight["fsdp_tensor"], "run_dir": str(tmp / "stopped"), "stop_after": 5}
    try:
        got = _worker(eight, 8)
    finally:
        one_got = _result(one)
    return {**one_got, **got, "tmp": tmp}


def test_partition_rules():
    devices = np.array(jax.devices() * 8)[:8]  # shapes only; no computation runs on this mesh
    mesh = jax.sharding.Mesh(devices.reshape(2, 2, 2), sharding.AXES)
    assert sharding.partition((64, 32), ("embed", "ffw"), mesh) == P("fsdp", "tensor")
    # 259 rows do not divide over 2 tensor shards: that dimension stays replicated
    assert sharding.partition((259, 32), ("vocab", "embed"), mesh) == P(None, "fsdp")
    assert sharding.partition((2, 32, 1, 8), ("layers", "embed", "kv_heads", "head_dim"),
                              mesh) == P(None, "fsdp", None, None)  # fmt: skip
    assert sharding.mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == {
        "data": 2, "fsdp": 2, "tensor": 2,
    }  # fmt: skip
    with pytest.raises(ConfigError, match="mesh"):
        sharding.mesh_shape(MeshConfig(data=3, fsdp=-1), 8)


def test_every_param_has_a_rule():
    specs = transformer.param_specs(
        ModelConfig(bias=True, positions="learned", tied_embeddings=False)
    )
    for s in jax.tree.leaves(specs, is_leaf=transformer.is_spec):
        for name in s.axes:
            assert name in sharding.RULES, name


def test_meshes_give_the_same_losses(runs):
    one = runs["one"]
    assert one["devices"] == 1 and len(one["train"]) == 10
    for name in MESHES:
        got = runs[name]
        assert got["devices"] == 8
        np.testing.assert_allclose(got["train"], one["train"], **TOL, err_msg=name)
        np.testing.assert_allclose(got["val"], one["val"], **TOL, err_msg=name)


def test_save_on_8_devices_restore_on_1(runs):
    straight, tmp = runs["fsdp"], runs["tmp"]
    assert runs["stopped"]["step"] == 5  # on fsdp 4 x tensor 2
    run = {"overrides": _overrides(tmp, "mesh.fsdp=1"), "run_dir": str(tmp / "stopped")}
    resumed = _worker({"resumed": run}, 1)["resumed"]
    assert resumed["step"] == 10
    np.testing.assert_allclose(resumed["train"], straight["train"], **TOL)
    np.testing.assert_allclose(resumed["val"], straight["val"], **TOL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(runs, tmp_path):
    one = runs["fsdp"]
    coord = f"127.0.0.1:{_free_port()}"
    two_dir = str(tmp_path / "two")
    run = {"two": {"overrides": _overrides(tmp_path, "mesh.fsdp=8"), "run_dir": two_dir}}
    procs = [
        _worker(run, 4, wait=False, coordinator=coord, num_processes=2, process_id=i)
        for i in range(2)
    ]
    two = [_result(p) for p in procs][0]["two"]
    assert two["devices"] == 8
    np.testing.assert_allclose(two["train"], one["train"], **TOL)
    np.testing.assert_allclose(two["val"], one["val"], **TOL)
