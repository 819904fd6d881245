"""Typed, frozen run configuration: loaded from YAML, overridden with `key=value`, validated.

Every run is one `Config`. Files under `configs/` hold the non-default fields; `--set a.b=v`
overrides them; `validate` rejects bad values with one line naming the key before any compute.
Vary a config in code with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import yaml


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the key and the value."""


# ---------------------------------------------------------------- what a key may change
# Field metadata says how a key may differ between two runs; `key_flags` reads it:
#   resumable  a resumed run directory may change it: it changes how the run goes, not what
#              it learns (lm.training.rundir.check_run_dir refuses a change to any other key);
#   compiled   a compiled program depends on it: it is part of lm.training.programs.program_key.
# A key that says nothing is compiled in and not resumable, the safe side, so a new key needs
# no entry anywhere to be handled correctly. Metadata on a section's field in `Config` holds
# for each of its keys, unless the key's own says otherwise.
NOT_COMPILED = MappingProxyType({"compiled": False})  # e.g. a number the programs take as input
RESUMABLE = MappingProxyType({"resumable": True})
HOST_SIDE = MappingProxyType({"compiled": False, "resumable": True})  # only the host reads it


class KeyFlags(NamedTuple):
    resumable: bool = False
    compiled: bool = True


def key_flags(cls: type | None = None) -> dict[str, KeyFlags]:
    """Every key of `cls` (default `Config`), dotted as in `--set`, with its flags."""
    return _key_flags(Config if cls is None else cls, "", {})


def _key_flags(cls: type, prefix: str, inherited: dict[str, bool]) -> dict[str, KeyFlags]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        flags = {**inherited, **{k: v for k, v in f.metadata.items() if k in KeyFlags._fields}}
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_key_flags(hints[f.name], f"{prefix}{f.name}.", flags))
        else:
            out[f"{prefix}{f.name}"] = KeyFlags(**flags)
    return out


@functools.cache
def resumable_keys() -> frozenset[str]:
    return frozenset(k for k, f in key_flags().items() if f.resumable)


@functools.cache
def uncompiled_keys() -> frozenset[str]:
    return frozenset(k for k, f in key_flags().items() if not f.compiled)


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (MHA); 1: MQA; between: GQA
    d_ff: int | None = None  # None: 4*d_model (gelu) or the llama 8/3*d_model rounded (swiglu)
    vocab_size: int = 259  # >= the tokenizer's vocab; extra rows are never targets
    max_seq_len: int = 256
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    positions: Literal["learned", "rope"] = "learned"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    tied_embeddings: bool = True
    bias: bool = False  # biases on the linear layers (GPT-2 has them; llama does not)
    rope_theta: float = 10000.0
    # RoPE frequency scaling, as long-context checkpoints use it (lm import-hf): "linear"
    # divides every frequency by rope_scaling_factor; "llama3" divides only the frequencies
    # whose wavelength exceeds rope_original_max_seq_len / rope_low_freq_factor, keeps those
    # shorter than rope_original_max_seq_len / rope_high_freq_factor, and blends in between.
    rope_scaling: Literal["none", "linear", "llama3"] = "none"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192
    norm_eps: float = 1e-5
    init_std: float = 0.02
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # matmul operands (accumulation is float32 either way); "auto": bfloat16 where the hardware
    # multiplies it natively (TPU, GPU, AVX512-BF16/AMX CPUs), float32 elsewhere
    # (lm/hardware/precision.py)
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    remat: Literal["none", "full", "dots"] = "none"  # activation rematerialisation per layer
    scan_layers: bool = True  # scan keeps compile time flat in depth
    # Backward passes: "custom" uses lm.model.cpu_kernels (hand-written, faster on XLA:CPU),
    # "autodiff" JAX's own; "auto" picks custom on the CPU backend without remat.
    grad_impl: Literal["auto", "custom", "autodiff"] = "auto"
    # "sp": the standard parametrization. "mup": the Maximal Update Parametrization (Yang et al.
    # 2022, arXiv:2203.03466, Table 8, Adam), equal to sp at d_model = mup_base_width but for the
    # attention's 1/head_dim temperature, so a learning rate tuned on that proxy width transfers
    # to wider models (lm/model/parametrization.py).
    parametrization: Literal["sp", "mup"] = "sp"
    mup_base_width: int = 32  # the proxy's d_model, where mup's width multiplier is 1

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffw_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":  # keep params equal to a 4x gelu MLP, rounded up to 64
            return -(-(8 * self.d_model // 3) // 64) * 64
        return 4 * self.d_model


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        norm="layernorm", positions="learned", mlp="gelu", tied_embeddings=True, bias=True
    ),
    "llama": dict(
        norm="rmsnorm", positions="rope", mlp="swiglu", tied_embeddings=False, bias=False
    ),
}


@dataclass(frozen=True)
class DataConfig:
    # "stdlib" (the running interpreter's own .py sources), a file, a directory, a glob,
    # or "hf:NAME[:CONFIG]" for a Hugging Face dataset (optional extra).
    source: str = "stdlib"
    text_field: str = "text"  # the column holding text, for Hugging Face datasets
    # data_files for a Hugging Face builder, e.g. source "hf:json" with a local path or glob
    hf_data_files: str | None = None
    max_docs: int | None = None  # cap the documents read (for quick experiments)
    val_fraction: float = 0.05  # share of documents held out, chosen by document hash
    tokenizer: Literal["byte", "bpe", "unigram"] = "byte"
    tokenizer_vocab: int = 4096  # for bpe/unigram
    tokenizer_sample_bytes: int = 20_000_000  # corpus sample the tokenizer is trained on
    # tokenized corpora, keyed by corpus + tokenizer
    cache_dir: str = field(default="~/.cache/lm", metadata=HOST_SIDE)
    # Synthetic tasks (source "task:sort" / "task:add", see lm/inference/task_eval.py); ignored
    # otherwise. Held-out inputs are chosen by hash with probability val_fraction.
    task_length: int = 6  # sort: letters per sequence
    task_symbols: int = 3  # sort: alphabet size (A, B, C, ...)
    task_min_digits: int = 3  # add: digits per operand, drawn uniformly in [min, max]
    task_max_digits: int = 5
    task_reverse: bool = True  # add: answer digits least-significant first (as carries flow)
    task_zero_pad: bool = False  # add: operands and sum at fixed width, with leading zeros
    task_train_examples: int = 100_000  # examples generated for the train split
    task_val_examples: int = 1000  # held-out examples (inputs may repeat)


@dataclass(frozen=True)
class TrainConfig:
    # Not compiled in: the schedule is numbers in the state, the seed an argument of the init
    # program, the number of eval windows how often the eval program runs.
    seed: int = field(default=0, metadata=NOT_COMPILED)
    seq_len: int = 128
    batch_size: int = 32  # sequences per optimizer step (across all devices and micro-steps)
    grad_accum: int = 1  # micro-batches per optimizer step
    steps: int = field(default=1000, metadata=NOT_COMPILED)
    lr: float = field(default=3e-3, metadata=NOT_COMPILED)
    schedule: Literal["cosine", "wsd", "constant"] = field(default="cosine", metadata=NOT_COMPILED)
    warmup_steps: int = field(default=100, metadata=NOT_COMPILED)
    # wsd: share of steps spent in the final decay
    decay_fraction: float = field(default=0.2, metadata=NOT_COMPILED)
    # cosine floor / wsd end, as a fraction of lr
    min_lr_ratio: float = field(default=0.1, metadata=NOT_COMPILED)
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # weight decay on embeddings (never on norms and biases)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    clip_norm: float = 1.0  # global-norm clipping; 0 disables
    # optimizer steps fused into one jitted call (fewer dispatches); compiled in, yet a run
    # resumes with another: each call's steps are the same steps
    steps_per_call: int = field(default=10, metadata=RESUMABLE)
    log_every: int = field(default=10, metadata=HOST_SIDE)
    eval_every: int = field(default=200, metadata=HOST_SIDE)
    # fixed validation windows of seq_len+1 tokens
    eval_windows: int = field(default=64, metadata=NOT_COMPILED)
    ckpt_every: int = field(default=200, metadata=HOST_SIDE)
    keep_ckpts: int = field(default=3, metadata=HOST_SIDE)
    # FLOP/s for MFU; None: measured once per machine, cached
    peak_flops: float | None = field(default=None, metadata=HOST_SIDE)
    # print a short sample every K steps; 0: only at the end
    sample_every: int = field(default=0, metadata=HOST_SIDE)
    sample_tokens: int = field(default=200, metadata=HOST_SIDE)


@dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = -1  # -1: all remaining devices
    tensor: int = 1


@dataclass(frozen=True)
class BigramConfig:
    add_k: float = 0.1  # add-k smoothing of the counts (kind: bigram)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    # data.* only changes the batches, which are inputs of the programs
    data: DataConfig = field(default_factory=DataConfig, metadata=NOT_COMPILED)
    train: TrainConfig = field(default_factory=TrainConfig)
    # a checkpoint restores onto any mesh
    mesh: MeshConfig = field(default_factory=MeshConfig, metadata=RESUMABLE)
    bigram: BigramConfig = field(default_factory=BigramConfig)
    kind: Literal["transformer", "bigram"] = "transformer"
    preset: Literal["gpt2", "llama", "none"] = "none"


# ---------------------------------------------------------------- loading and overrides


def coerce(key: str, value: Any, typ: Any) -> Any:
    """Check `value` against the annotation `typ`, converting strings from the command line."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}={value!r}: bad value")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r}: expected a string")
    raise ConfigError(f"{key}: unsupported type {typ}")


def _shown(key: str) -> str:
    """A key as typed, or quoted when it would not read as one word on one line."""
    return key if key and key.isprintable() and not any(c.isspace() for c in key) else repr(key)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise ConfigError(
                f"unknown config key {_shown(f'{prefix}{k!s}')} (known: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        typ = hints[f.name]
        v = data[f.name]
        if dataclasses.is_dataclass(typ):
            kwargs[f.name] = _build(typ, v, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = coerce(f"{prefix}{f.name}", v, typ)
    return cls(**kwargs)


def parse_scalar(text: str) -> Any:
    """A command-line value as YAML would read it ('3e-4' is a number, 'true' a bool)."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eE") else v
        except ValueError:
            return v
    return v


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`['model.d_model=256', 'train.lr=3e-4']` applied onto a nested dict (a copy)."""
    raw = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {_shown(key)}: {_shown(p)} is not a section")
        node[parts[-1]] = parse_scalar(value)
    return raw


def from_dict(raw: dict[str, Any]) -> Config:
    raw = dict(raw or {})
    preset = raw.get("preset", "none")
    if preset not in ("none", *PRESETS):
        raise ConfigError(f"preset={preset!r}: must be one of none, {', '.join(PRESETS)}")
    if preset != "none":  # the preset fills model keys the file leaves unset
        model = raw.get("model") or {}
        if not isinstance(model, dict):
            raise ConfigError(f"model: expected a mapping, got {model!r}")
        raw["model"] = {**PRESETS[preset], **model}
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {p}{where}: not valid YAML") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p}: expected a mapping of sections at the top level")
    return raw


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    raw = read_yaml(path) if path else {}
    return from_dict(apply_overrides(raw, list(overrides)))


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---------------------------------------------------------------- validation


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


# Ints become int32 scalars and array sizes on device; any larger one is a typo, not a run.
INT_LIMIT = 2**31 - 1


def _check_numbers(obj: Any, prefix: str) -> None:
    """Every number finite (inf/nan pass `> 0` checks and poison training) and every int
    within int32."""
    for f in dataclasses.fields(obj):
        v, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            _check_numbers(v, f"{key}.")
        elif isinstance(v, float):
            _check(math.isfinite(v), key, v, "must be a finite number")
        elif isinstance(v, int) and not isinstance(v, bool):
            _check(abs(v) <= INT_LIMIT, key, v, f"out of range (at most {INT_LIMIT} in size)")


def validate(cfg: Config) -> None:
    """Reject impossible values with one line naming the key; cheap, no compute."""
    _check_numbers(cfg, "")
    _check_model(cfg.model)
    _check_data(cfg)
    _check_train(cfg.train, cfg.model)
    _check(cfg.bigram.add_k > 0, "bigram.add_k", cfg.bigram.add_k, "must be > 0")
    me = cfg.mesh
    sizes = {"mesh.data": me.data, "mesh.fsdp": me.fsdp, "mesh.tensor": me.tensor}
    for k, v in sizes.items():
        _check(v == -1 or v >= 1, k, v, "must be >= 1 or -1 (inferred)")
    _check(sum(v == -1 for v in sizes.values()) <= 1, "mesh", sizes, "at most one axis may be -1")


def _check_model(m: ModelConfig) -> None:
    for k in ("n_layers", "d_model", "n_heads", "vocab_size", "max_seq_len"):
        _check(getattr(m, k) >= 1, f"model.{k}", getattr(m, k), "must be >= 1")
    _check(
        m.d_model % m.n_heads == 0,
        "model.d_model",
        m.d_model,
        f"must be divisible by model.n_heads={m.n_heads}",
    )
    if m.n_kv_heads is not None:
        _check(m.n_kv_heads >= 1, "model.n_kv_heads", m.n_kv_heads, "must be >= 1")
        _check(
            m.n_heads % m.n_kv_heads == 0,
            "model.n_heads",
            m.n_heads,
            f"must be divisible by model.n_kv_heads={m.n_kv_heads}",
        )
    if m.d_ff is not None:
        _check(m.d_ff >= 1, "model.d_ff", m.d_ff, "must be >= 1")
    if m.positions == "rope":
        _check(m.head_dim % 2 == 0, "model.d_model", m.d_model, "rope needs an even head dim")
    if m.rope_scaling != "none":
        _check(m.positions == "rope", "model.rope_scaling", m.rope_scaling, "needs positions=rope")
        _check(
            m.rope_scaling_factor > 0,
            "model.rope_scaling_factor",
            m.rope_scaling_factor,
            "must be > 0",
        )
    if m.rope_scaling == "llama3":
        _check(
            0 < m.rope_low_freq_factor < m.rope_high_freq_factor,
            "model.rope_low_freq_factor",
            m.rope_low_freq_factor,
            f"must be in (0, model.rope_high_freq_factor={m.rope_high_freq_factor})",
        )
        _check(
            m.rope_original_max_seq_len >= 1,
            "model.rope_original_max_seq_len",
            m.rope_original_max_seq_len,
            "must be >= 1",
        )
    _check(m.rope_theta > 0, "model.rope_theta", m.rope_theta, "must be > 0")
    _check(m.norm_eps > 0, "model.norm_eps", m.norm_eps, "must be > 0")
    _check(m.init_std > 0, "model.init_std", m.init_std, "must be > 0")
    p = m.parametrization  # checked when loaded; this catches one set by dataclasses.replace
    _check(p in ("sp", "mup"), "model.parametrization", p, "must be one of 'sp', 'mup'")
    _check(m.mup_base_width >= 1, "model.mup_base_width", m.mup_base_width, "must be >= 1")


def _check_data(cfg: Config) -> None:
    """The data keys, and what the source implies for the model and the train windows."""
    m, d, t = cfg.model, cfg.data, cfg.train
    _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "must be in (0, 1)")
    _check(d.tokenizer_vocab >= 260, "data.tokenizer_vocab", d.tokenizer_vocab, "must be >= 260")
    if d.max_docs is not None:
        _check(d.max_docs >= 2, "data.max_docs", d.max_docs, "must be >= 2")
    # The source checks itself. Lazy and upward (the one import tests/test_layout.py allows
    # against the layers): lm.data imports lm.config, and lm.data.sources imports nothing
    # that imports this module back, so there is no cycle.
    from lm.data import sources

    try:
        source = sources.source_for(d)
        source.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_path(d.cache_dir, "data.cache_dir")
    tok_vocab = 259 if d.tokenizer == "byte" else d.tokenizer_vocab
    tok_name = d.tokenizer
    fixed = source.tokenizer()  # a task's symbols
    if fixed is not None:
        tok_vocab, tok_name = fixed.vocab_size, d.source
    width = source.example_width()
    if width is not None:
        _check(
            t.seq_len == width - 1,
            "train.seq_len",
            t.seq_len,
            f"{d.source} examples are {width} tokens, so it must be {width - 1}",
        )
    _check(
        m.vocab_size >= tok_vocab,
        "model.vocab_size",
        m.vocab_size,
        f"smaller than the {tok_name} tokenizer's {tok_vocab} tokens",
    )


def _check_train(t: TrainConfig, m: ModelConfig) -> None:
    _check(t.seed >= 0, "train.seed", t.seed, "must be >= 0")
    _check(t.lr > 0, "train.lr", t.lr, "must be > 0")
    _check(t.steps >= 1, "train.steps", t.steps, "must be >= 1")
    _check(t.seq_len >= 1, "train.seq_len", t.seq_len, "must be >= 1")
    _check(
        t.seq_len <= m.max_seq_len,
        "train.seq_len",
        t.seq_len,
        f"exceeds model.max_seq_len={m.max_seq_len}",
    )
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be >= 1")
    _check(
        t.batch_size % t.grad_accum == 0,
        "train.batch_size",
        t.batch_size,
        f"must be divisible by train.grad_accum={t.grad_accum}",
    )
    _check(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "must be >= 0")
    _check(
        0 <= t.decay_fraction <= 1, "train.decay_fraction", t.decay_fraction, "must be in [0, 1]"
    )
    _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", t.min_lr_ratio, "must be in [0, 1]")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _check(0 <= t.beta1 < 1, "train.beta1", t.beta1, "must be in [0, 1)")
    _check(0 <= t.beta2 < 1, "train.beta2", t.beta2, "must be in [0, 1)")
    _check(t.eps > 0, "train.eps", t.eps, "must be > 0")
    _check(t.clip_norm >= 0, "train.clip_norm", t.clip_norm, "must be >= 0")
    _check(t.steps_per_call >= 1, "train.steps_per_call", t.steps_per_call, "must be >= 1")
    for k in ("log_every", "eval_every", "ckpt_every", "eval_windows", "keep_ckpts"):
        _check(getattr(t, k) >= 1, f"train.{k}", getattr(t, k), "must be >= 1")
    _check(t.sample_every >= 0, "train.sample_every", t.sample_every, "must be >= 0")
    if t.peak_flops is not None:
        _check(t.peak_flops > 0, "train.peak_flops", t.peak_flops, "must be > 0")


def _check_path(value: str, key: str) -> Path:
    _check("\0" not in value, key, value, "contains a NUL character")
    try:
        return Path(value).expanduser()
    except RuntimeError:  # ~user with no such user
        raise ConfigError(
            f"{key}={value!r}: cannot expand its ~ (no such home directory)"
        ) from None
