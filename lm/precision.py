"""The dtype of the matmul operands: `model.compute_dtype`, and what its default "auto" means.

Whatever the choice, accumulation, the residual stream, norms, softmax, the loss, the params
and the optimizer state are float32 (lm.model); only the matmul operands change. "auto" picks
bfloat16 operands where bfloat16 matmuls run on hardware made for them, float32 elsewhere:

  TPU, GPU                                          bfloat16 (MXU, tensor cores)
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

from lm import peak
from lm.config import Config, ModelConfig

ENV = "LM_AUTO_COMPUTE_DTYPE"
DTYPES = ("float32", "bfloat16")
_NAMES = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "bf16": "BF16"}


class Choice(NamedTuple):
    dtype: str  # "float32" or "bfloat16"
    why: str


def decide(platform: str, features: set[str], override: str | None = None) -> Choice:
    """auto's rule, from the backend ("cpu", "gpu", "tpu"), the CPU's features
    (`peak.cpu_features()`) and the LM_AUTO_COMPUTE_DTYPE override."""
    if override:
        if override not in DTYPES:
            raise ValueError(f"{ENV}={override!r}: must be one of {', '.join(DTYPES)}")
        return Choice(override, f"{ENV}={override}")
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


@functools.cache
def auto() -> Choice:
    """What "auto" means on this machine (decided once per process)."""
    return decide(jax.default_backend(), peak.cpu_features(), os.environ.get(ENV) or None)


def compute_dtype(cfg: ModelConfig) -> str:
    """The matmul operand dtype of `cfg`, "auto" resolved: what lm.model casts to."""
    return auto().dtype if cfg.compute_dtype == "auto" else cfg.compute_dtype


def resolve(cfg: Config, kept: str | None = None) -> tuple[Config, str]:
    """cfg with model.compute_dtype made concrete, and the line a run prints to say what it
    multiplies in and why. `kept`: the dtype the run directory already trains in (a resume),
    which "auto" keeps rather than re-deciding on this machine."""
    asked = cfg.model.compute_dtype
    if asked != "auto":
        dtype, why = asked, f"model.compute_dtype={asked}"
    elif kept in DTYPES:
        dtype, why = kept, "model.compute_dtype=auto, kept from the run's start (config.yaml)"
    else:
        choice = auto()
        dtype, why = choice.dtype, f"model.compute_dtype=auto: {choice.why}"
    what = (
        "bfloat16 matmul operands with float32 accumulation"
        if dtype == "bfloat16"
        else "float32 matmuls"
    )
    line = (
        f"precision: {what}; norms, softmax and loss in float32, params and optimizer state in "
        f"{cfg.model.param_dtype} ({why})"
    )
    model = dataclasses.replace(cfg.model, compute_dtype=dtype)
    return dataclasses.replace(cfg, model=model), line
