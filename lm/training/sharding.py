"""One device mesh with named axes, and the one table from logical axes to mesh axes.

Weights name their dimensions with logical axes in `model.param_specs`; `RULES` maps each to a
mesh axis. A dimension that a mesh axis does not divide stays replicated on it (a 259-row byte
vocabulary on 2 tensor shards, an MQA model's single kv head), so any config runs on any mesh.
This is `jax.jit` + `jax.sharding`, the successor of `pmap`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.config import ConfigError, MeshConfig
from lm.model.transformer import ParamSpec, is_spec

AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None: replicated). FSDP shards the model width; tensor
# parallelism splits heads, the MLP width and the vocabulary.
RULES: dict[str, tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "ffw": ("tensor",),
    "head_dim": None,
    "layers": None,
    "seq": None,
}


def mesh_shape(cfg: MeshConfig, n_devices: int) -> dict[str, int]:
    sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
    known = math.prod(v for v in sizes.values() if v != -1)
    for k, v in sizes.items():
        if v == -1:
            if n_devices % known:
                raise ConfigError(f"mesh.{k}=-1: {n_devices} devices not divisible by {known}")
            sizes[k] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
        raise ConfigError(
            f"mesh={sizes}: product {math.prod(sizes.values())} != {n_devices} devices"
        )
    return sizes


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(cfg, len(devices))
    grid = np.array(devices).reshape([sizes[a] for a in AXES])
    return Mesh(grid, AXES)


def partition(shape: tuple[int, ...], axes: tuple[str | None, ...], mesh: Mesh) -> PartitionSpec:
    used: set[str] = set()
    out = []
    for dim, name in zip(shape, axes, strict=True):
        mesh_axes = tuple(a for a in (RULES.get(name) or ()) if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in mesh_axes)
        if mesh_axes and dim % size == 0:
            used.update(mesh_axes)
            out.append(mesh_axes if len(mesh_axes) > 1 else mesh_axes[0])
        else:
            out.append(None)
    return PartitionSpec(*out)


def param_shardings(specs: Any, mesh: Mesh) -> Any:
    def one(s: ParamSpec) -> NamedSharding:
        return NamedSharding(mesh, partition(s.shape, s.axes, mesh))

    return jax.tree.map(one, specs, is_leaf=is_spec)


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int) -> NamedSharding:
    """Shard the batch dimension over data x fsdp, everything else replicated."""
    spec = [None] * ndim
    spec[batch_axis] = tuple(a for a in RULES["batch"] if mesh.shape[a] > 1) or None
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
