"""The dtype of the matmul operands: `model.compute_dtype`, and what its default "auto" means.

Whatever the choice, accumulation, the residual stream, norms, softmax, the loss, the params and the
optimizer state are float32 (lm.model.transformer); only the matmul operands change. "auto" picks
bfloat16 operands where bfloat16 matmuls run on hardware made for them, float32 elsewhere:

  TPU; GPU of compute capability >= 8.0 (Ampere on)  bfloat16 (MXU, tensor cores)
  older GPUs (V100, T4: no bfloat16 tensor cores)   float32
  CPU with AVX512-BF16 or AMX-BF16 (x86), BF16 (aarch64)  bfloat16
  any other CPU (AVX2, AVX-512 without BF16)        float32: XLA:CPU converts bfloat16 to
                                                    float32 around every dot, so it is slower

The rule reads the hardware instead of timing it at start-up, so every run of a sweep on one
machine computes alike and a resumed run never flips precision on a noisy measurement. The
timings behind it, both precisions side by side on each kind of CPU, are in
experiments/results/bench_train/ (`python benchmarks/bench_train.py` checks the rule on the
machine at hand: its acceptance block says FAIL when auto's pick is not the faster one).

LM_AUTO_COMPUTE_DTYPE=float32|bfloat16 overrides the rule (the test suite pins float32 so its
figures do not depend on the CPU it runs on). A training run records the dtype it resolved to
in its config.yaml and keeps it when resumed, on any machine.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import NamedTuple

import jax

from lm.config import Config, ConfigError, ModelConfig
from lm.hardware import peak

ENV = "LM_AUTO_COMPUTE_DTYPE"
DTYPES = ("float32", "bfloat16")
_NAMES = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "bf16": "BF16"}


class Choice(NamedTuple):
    dtype: str  # "float32" or "bfloat16"
    why: str


def decide(
    platform: str,
    features: set[str],
    override: str | None = None,
    gpu_capability: float | None = None,
) -> Choice:
    """auto's rule, from the backend ("cpu", "gpu", "tpu"), the CPU's features
    (`peak.cpu_features()`), the GPU's compute capability and the LM_AUTO_COMPUTE_DTYPE
    override."""
    if override:
        if override not in DTYPES:
            raise ConfigError(f"{ENV}={override!r}: must be one of {', '.join(DTYPES)}")
        return Choice(override, f"{ENV}={override}")
    if platform == "gpu" and gpu_capability is not None and gpu_capability < 8.0:
        return Choice(
            "float32",
            f"this GPU (compute capability {gpu_capability}) has no bfloat16 tensor cores",
        )
    if platform != "cpu":
        return Choice("bfloat16", f"{platform.upper()}s multiply bfloat16 natively")
    native = sorted(_NAMES[f] for f in features & peak.BF16_FEATURES)
    if native:
        return Choice("bfloat16", f"this CPU has {'/'.join(native)} bfloat16 matmul instructions")
    return Choice(
        "float32",
        "this CPU has no bfloat16 matmul instructions (AVX512-BF16, AMX-BF16), where XLA "
        "converts bfloat16 in software and float32 is faster",
    )


def _gpu_capability() -> float | None:
    try:
        return float(jax.devices()[0].compute_capability)
    except (AttributeError, TypeError, ValueError):
        return None  # not a GPU, or a backend that does not say


def rule(override: str | None = None) -> Choice:
    """The rule's pick for this machine (the override, where given, wins)."""
    platform = jax.default_backend()
    cap = _gpu_capability() if platform == "gpu" else None
    return decide(platform, peak.cpu_features(), override, gpu_capability=cap)


@functools.cache
def auto() -> Choice:
    """What "auto" means in this process, decided once: LM_AUTO_COMPUTE_DTYPE, else the rule."""
    return rule(os.environ.get(ENV) or None)


def _process_0s(choice: Choice) -> Choice:
    """On several processes, process 0's choice, so every host compiles the same program
    (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return choice
    from jax.experimental import multihost_utils

    first = DTYPES[int(multihost_utils.broadcast_one_to_all(DTYPES.index(choice.dtype)))]
    return (
        choice if first == choice.dtype else Choice(first, f"process 0's pick; here {choice.why}")
    )


def compute_dtype(cfg: ModelConfig) -> str:
    """The matmul operand dtype of `cfg`, "auto" resolved: what lm.model.transformer casts to."""
    return auto().dtype if cfg.compute_dtype == "auto" else cfg.compute_dtype


def resolve(
    cfg: Config, kept: str | None = None, kept_from: str = "the run's start (config.yaml)"
) -> tuple[Config, str]:
    """cfg with model.compute_dtype made concrete, and the line a run prints to say what it
    multiplies in and why. `kept`: the dtype the run already trains in (a resume, or the run
    it branches from), which "auto" keeps rather than re-deciding on this machine. Every
    process of a multi-process job must call it (process 0's pick wins)."""
    asked = cfg.model.compute_dtype
    if asked != "auto":
        dtype, why = asked, f"model.compute_dtype={asked}"
    elif kept in DTYPES:
        dtype, why = kept, f"model.compute_dtype=auto, kept from {kept_from}"
    else:
        choice = _process_0s(auto())
        dtype, why = choice.dtype, f"model.compute_dtype=auto: {choice.why}"
    model = dataclasses.replace(cfg.model, compute_dtype=dtype)
    return dataclasses.replace(cfg, model=model), describe(model, why)


def describe(model: ModelConfig, why: str) -> str:
    """The line that says what a (resolved) model multiplies in, and why."""
    if model.compute_dtype == "bfloat16":
        what = "bfloat16 matmul operands with float32 accumulation"
    else:
        what = "float32 matmuls"
    return (
        f"precision: {what}; norms, softmax and loss in float32, params and optimizer state in "
        f"{model.param_dtype} ({why})"
    )
