"""Hugging Face checkpoints in and out: Llama-family and GPT-2 models as our params and config.

`import_hf(hf_dir, run_dir)` reads a local model directory (config.json, safetensors weights in
one file or in shards listed by model.safetensors.index.json, and the tokenizer) and writes a
run directory (config.yaml, tokenizer, a step-0 checkpoint) that `lm sample`, `inspect`, `eval`
and `train` take. `export_hf(run_dir, out_dir)` writes the reverse: config.json,
model.safetensors and the tokenizer, which `transformers` loads as LlamaForCausalLM or
GPT2LMHeadModel.

Every config.json field that changes the computation is either mapped onto `ModelConfig` or
refused with one line naming it (`HFError`), before any weight is read. Weights are read and
written as safetensors only, never unpickled (`pytorch_model.bin` is refused), and imported as
float32 whatever their stored dtype (bfloat16 widens exactly). Every file read must lie inside
the model directory: a shard name in the index that is absolute, holds `..`, or resolves
(through symlinks) anywhere else is refused, so a downloaded index cannot make the import read
someone else's files. The one exception is the Hugging Face hub cache's own layout, where a
snapshot's files are symlinks into its repository's `blobs/`.

How the weights correspond (ours as in lm.model.transformer; HF Linear weights are [out, in],
GPT-2's Conv1D weights [in, out]; layer i of a stacked [L, ...] weight is HF's layer i):

  ours                    Llama (model.*)                      GPT-2 (transformer.*)
  embed [V, D]            embed_tokens.weight                  wte.weight
  pos_embed [P, D]        -                                    wpe.weight
  attn_norm.scale/bias    layers.i.input_layernorm.weight      h.i.ln_1.weight/bias
  wq, wk, wv [D, n, H]    layers.i.self_attn.{q,k,v}_proj      h.i.attn.c_attn (q|k|v columns)
  wo [N, H, D]            layers.i.self_attn.o_proj            h.i.attn.c_proj
  mlp_norm.scale/bias     layers.i.post_attention_layernorm    h.i.ln_2
  w_gate, w_up [D, F]     layers.i.mlp.{gate,up}_proj          h.i.mlp.c_fc (w_up)
  w_down [F, D]           layers.i.mlp.down_proj               h.i.mlp.c_proj
  final_norm              norm.weight                          ln_f.weight/bias
  unembed [D, V]          lm_head.weight (absent when tied)    lm_head.weight (when untied)

Our rotary embedding already rotates the two halves of each head, as HF's Llama does, so q and
k need no permutation; our GELU is the tanh approximation, which is GPT-2's "gelu_new".

A muP model (model.parametrization: mup) exports with its two forward-pass multipliers folded
into the weights, so HF's plain architectures compute the same logits: the output multiplier 1/m
into the final norm's scale (and bias), and the attention's 1/H (HF divides by sqrt(H)) into wq
and bq as a factor 1/sqrt(H), which commutes with the rotary embedding. The export imports back
as an sp model with the same function.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lm import config as config_lib
from lm.config import Config, DataConfig, ModelConfig, TrainConfig
from lm.data.tokenizer import ByteTokenizer, HFTokenizer, SentencePieceTokenizer, save_tokenizer
from lm.interop.hf_tokenizer import byte_tokenizer_json, tokenizer_config
from lm.model import parametrization as mup
from lm.util import dirlock, tensorfile
from lm.util.files import atomic_write

CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"

LLAMA_TYPES = ("llama", "mistral")  # mistral is llama plus a sliding window, refused below
GPT2_ACTS = ("gelu_new", "gelu_pytorch_tanh")  # both the tanh approximation
# HF buffers some checkpoints carry that are functions of the config, not weights.
_BUFFERS = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")
# The smallest data.tokenizer_vocab a config accepts: an imported vocabulary is recorded there.
_MIN_VOCAB = 260
# Model keys a user may change on import: they do not change what the weights mean.
_MODEL_OVERRIDABLE = {"param_dtype", "compute_dtype", "remat", "scan_layers"}


class HFError(ValueError):
    """An unsupported or malformed checkpoint; one line naming the file and field."""


# ---------------------------------------------------------------- config.json <-> ModelConfig


def _hub_blobs(root: Path) -> Path | None:
    """blobs/ of a hub cache repository (models--ORG--NAME/snapshots/REV) when `root` (resolved)
    is one of its snapshots, whose files are symlinks into it; else None."""
    snapshots, repo = root.parent, root.parent.parent
    if snapshots.name == "snapshots" and repo.name.startswith(("models--", "datasets--")):
        return repo / "blobs"
    return None


def _inside(hf_dir: Path, name: Any, where: str) -> Path:
    """hf_dir / name, refused (HFError) unless it stays inside hf_dir: `name` relative,
    without `..`, and resolving (symlinks followed) within hf_dir or its hub cache blobs/."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise HFError(f"{where}: file name {name!r}: expected a file name in {hf_dir}")
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise HFError(f"{where}: {name!r} points outside {hf_dir} (absolute or '..'): refused")
    path = hf_dir / name
    root = hf_dir.resolve()
    real = path.resolve()
    allowed = [root, *filter(None, [_hub_blobs(root)])]
    if not any(real.is_relative_to(a) for a in allowed):
        raise HFError(f"{where}: {name!r} resolves to {real}, outside {hf_dir}: refused")
    return path


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / CONFIG_JSON
    if not path.is_file():
        raise HFError(f"{hf_dir}: no {CONFIG_JSON} (not a Hugging Face model directory)")
    _inside(Path(hf_dir), CONFIG_JSON, str(path))
    try:
        hf = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise HFError(f"{path}: not valid JSON") from None
    if not isinstance(hf, dict):
        raise HFError(f"{path}: expected a JSON object")
    return hf


def _field(hf: dict, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in hf or hf[key] is None:
        if default is ...:
            raise HFError(f"{CONFIG_JSON}: {key} is missing")
        return default
    v = hf[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise HFError(f"{CONFIG_JSON}: {key}={v!r}: expected {getattr(kind, '__name__', kind)}")
    return v


def _refuse(hf: dict, key: str, ok, why: str) -> None:
    """Raise unless hf[key] (absent reads as None) passes `ok`."""
    if not ok(hf.get(key)):
        raise HFError(f"{CONFIG_JSON}: {key}={hf.get(key)!r} is not supported ({why})")


def _rope_fields(hf: dict, max_seq_len: int) -> dict[str, Any]:
    """RoPE theta and scaling, from transformers 5's rope_parameters or 4's rope_theta and
    rope_scaling (`type` or `rope_type`)."""
    params = hf.get("rope_parameters")
    key = "rope_parameters"
    if params is None:
        key = "rope_scaling"
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if not isinstance(params, dict):
        raise HFError(f"{CONFIG_JSON}: {key}={params!r}: expected an object")
    kind = params.get("rope_type", params.get("type")) or "default"
    theta = _field(params, "rope_theta", float, 10000.0)
    out: dict[str, Any] = {"rope_theta": theta}
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise HFError(
            f"{CONFIG_JSON}: partial_rotary_factor={partial!r} is not supported (every "
            "head dim is rotated here)"
        )
    if kind == "default":
        return out
    if kind not in ("linear", "llama3"):
        raise HFError(
            f"{CONFIG_JSON}: {key}.rope_type={kind!r} is not supported (default, linear and "
            "llama3 are)"
        )
    sub = {k: v for k, v in params.items() if v is not None}
    try:
        out |= {"rope_scaling": kind, "rope_scaling_factor": _field(sub, "factor", float)}
        if kind == "llama3":
            out |= {
                "rope_low_freq_factor": _field(sub, "low_freq_factor", float),
                "rope_high_freq_factor": _field(sub, "high_freq_factor", float),
                "rope_original_max_seq_len": _field(
                    sub, "original_max_position_embeddings", int, max_seq_len
                ),
            }
    except HFError as e:
        raise HFError(str(e).replace(f"{CONFIG_JSON}: ", f"{CONFIG_JSON}: {key}.")) from None
    return out


def model_config_from_hf(hf: dict[str, Any]) -> tuple[ModelConfig, str]:
    """(our ModelConfig, family "llama" or "gpt2") for a config.json; HFError names the first
    field we cannot represent exactly."""
    mt = hf.get("model_type")
    if mt in LLAMA_TYPES:
        return _llama_config(hf), "llama"
    if mt == "gpt2":
        return _gpt2_config(hf), "gpt2"
    raise HFError(
        f"{CONFIG_JSON}: model_type={mt!r} is not supported (llama, mistral without a "
        "sliding window, and gpt2 are)"
    )


def _llama_config(hf: dict) -> ModelConfig:
    D = _field(hf, "hidden_size", int)
    N = _field(hf, "num_attention_heads", int)
    K = _field(hf, "num_key_value_heads", int, N)
    if N <= 0 or D % N:
        raise HFError(
            f"{CONFIG_JSON}: hidden_size={D} is not a multiple of num_attention_heads={N}"
        )
    _refuse(hf, "head_dim", lambda v: v in (None, D // N), f"only hidden_size / heads = {D // N}")
    _refuse(hf, "hidden_act", lambda v: v in (None, "silu"), "only silu (SwiGLU)")
    _refuse(hf, "sliding_window", lambda v: v is None, "attention is always full here")
    _refuse(hf, "use_sliding_window", lambda v: not v, "attention is always full here")
    P = _field(hf, "max_position_embeddings", int)
    return ModelConfig(
        n_layers=_field(hf, "num_hidden_layers", int),
        d_model=D,
        n_heads=N,
        n_kv_heads=None if K == N else K,
        d_ff=_field(hf, "intermediate_size", int),
        vocab_size=_field(hf, "vocab_size", int),
        max_seq_len=P,
        norm="rmsnorm",
        positions="rope",
        mlp="swiglu",
        tied_embeddings=_field(hf, "tie_word_embeddings", bool, False),
        # one switch here for both; a missing half is zeros (see _entries)
        bias=_field(hf, "attention_bias", bool, False) or _field(hf, "mlp_bias", bool, False),
        norm_eps=_field(hf, "rms_norm_eps", float, 1e-6),
        **_rope_fields(hf, P),
    )


def _gpt2_config(hf: dict) -> ModelConfig:
    _refuse(hf, "activation_function", lambda v: v in (None, *GPT2_ACTS), "only gelu_new")
    _refuse(hf, "scale_attn_weights", lambda v: v in (None, True), "scores are scaled here")
    _refuse(hf, "scale_attn_by_inverse_layer_idx", lambda v: not v, "no per-layer scaling")
    _refuse(hf, "add_cross_attention", lambda v: not v, "decoder-only")
    D = _field(hf, "n_embd", int)
    return ModelConfig(
        n_layers=_field(hf, "n_layer", int),
        d_model=D,
        n_heads=_field(hf, "n_head", int),
        d_ff=_field(hf, "n_inner", int, 4 * D),
        vocab_size=_field(hf, "vocab_size", int),
        max_seq_len=_field(hf, "n_positions", int),
        norm="layernorm",
        positions="learned",
        mlp="gelu",
        tied_embeddings=_field(hf, "tie_word_embeddings", bool, True),
        bias=True,
        norm_eps=_field(hf, "layer_norm_epsilon", float, 1e-5),
    )


def hf_config_from_model(m: ModelConfig, tok=None) -> dict[str, Any]:
    """A config.json for our model: GPT-2 when it has GPT-2's shape, else Llama. Raises
    HFError naming the model key that neither can express."""
    ids = {}
    if tok is not None:
        ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}
        ids["pad_token_id"] = tok.pad_id
    common = {"vocab_size": m.vocab_size, "tie_word_embeddings": m.tied_embeddings, **ids}
    common["torch_dtype"] = "float32"
    if _family(m) == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": m.d_model,
            "n_layer": m.n_layers,
            "n_head": m.n_heads,
            "n_inner": m.ffw_dim,
            "n_positions": m.max_seq_len,
            "n_ctx": m.max_seq_len,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": m.norm_eps,
            "attn_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            **common,
        }
    rope: dict[str, Any] | None = None
    if m.rope_scaling == "linear":
        rope = {"rope_type": "linear", "factor": m.rope_scaling_factor}
    elif m.rope_scaling == "llama3":
        rope = {
            "rope_type": "llama3",
            "factor": m.rope_scaling_factor,
            "low_freq_factor": m.rope_low_freq_factor,
            "high_freq_factor": m.rope_high_freq_factor,
            "original_max_position_embeddings": m.rope_original_max_seq_len,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": m.d_model,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.head_dim,
        "intermediate_size": m.ffw_dim,
        "max_position_embeddings": m.max_seq_len,
        "hidden_act": "silu",
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "rope_scaling": rope,
        "attention_bias": m.bias,
        "attention_dropout": 0.0,
        "mlp_bias": m.bias,
        **common,
    }


def _family(m: ModelConfig) -> str:
    """Which HF architecture holds our model exactly (its biases may be zero-filled)."""
    if m.norm == "layernorm" and m.positions == "learned" and m.mlp == "gelu":
        if m.kv_heads != m.n_heads:
            raise HFError(f"model.n_kv_heads={m.n_kv_heads}: GPT-2 has no grouped-query attention")
        return "gpt2"
    for key, want in (("norm", "rmsnorm"), ("positions", "rope"), ("mlp", "swiglu")):
        if getattr(m, key) != want:
            raise HFError(
                f"model.{key}={getattr(m, key)!r}: neither GPT-2 (layernorm, learned, gelu) nor "
                "Llama (rmsnorm, rope, swiglu) has this combination"
            )
    return "llama"


# ---------------------------------------------------------------- the weight correspondence


@dataclasses.dataclass(frozen=True)
class _Entry:
    ours: str  # path in our params, "layers.wq" (stacked over L) or "embed"; "": none, zeros
    hf: str | None  # HF name ("{i}": the layer); None: not in the file, ours are zeros
    n_in: int | None  # matrices: our leading input axes; None: a vector, flattened
    linear: bool = True  # HF Linear [out, in] (transposed) vs GPT-2 Conv1D [in, out]


def _entries(m: ModelConfig, family: str, hf: dict | None = None) -> list[_Entry]:
    """The correspondence for model `m`; `hf` (an imported config.json) says which of Llama's
    optional biases the file holds (exports write them all)."""
    E = _Entry
    if family == "llama":
        at, ml = "model.layers.{i}.self_attn.", "model.layers.{i}.mlp."
        out = [
            E("embed", "model.embed_tokens.weight", 0, False),
            E("final_norm.scale", "model.norm.weight", None),
            E("layers.attn_norm.scale", "model.layers.{i}.input_layernorm.weight", None),
            E("layers.mlp_norm.scale", "model.layers.{i}.post_attention_layernorm.weight", None),
            E("layers.wq", at + "q_proj.weight", 1),
            E("layers.wk", at + "k_proj.weight", 1),
            E("layers.wv", at + "v_proj.weight", 1),
            E("layers.wo", at + "o_proj.weight", 2),
            E("layers.w_gate", ml + "gate_proj.weight", 1),
            E("layers.w_up", ml + "up_proj.weight", 1),
            E("layers.w_down", ml + "down_proj.weight", 1),
        ]
        if m.bias:
            attn_b = hf is None or bool(hf.get("attention_bias"))
            mlp_b = hf is None or bool(hf.get("mlp_bias"))
            out += [
                E(f"layers.b{c}", at + f"{c}_proj.bias" if attn_b else None, None) for c in "qkvo"
            ]
            out += [E("layers.b_up", ml + "up_proj.bias" if mlp_b else None, None)]
            out += [E("layers.b_down", ml + "down_proj.bias" if mlp_b else None, None)]
            if mlp_b:  # our gated MLP has no gate bias: it must be zero
                out += [E("", ml + "gate_proj.bias", None)]
        if not m.tied_embeddings:
            out.append(E("unembed", "lm_head.weight", 1))
        return out
    h = "transformer.h.{i}."
    out = [
        E("embed", "transformer.wte.weight", 0, False),
        E("pos_embed", "transformer.wpe.weight", 0, False),
        E("final_norm.scale", "transformer.ln_f.weight", None),
        E("final_norm.bias", "transformer.ln_f.bias", None),
        E("layers.attn_norm.scale", h + "ln_1.weight", None),
        E("layers.attn_norm.bias", h + "ln_1.bias", None),
        E("layers.mlp_norm.scale", h + "ln_2.weight", None),
        E("layers.mlp_norm.bias", h + "ln_2.bias", None),
        # c_attn holds q|k|v side by side; it is split into these three names on import
        E("layers.wq", h + "attn.c_attn.weight#q", 1, False),
        E("layers.wk", h + "attn.c_attn.weight#k", 1, False),
        E("layers.wv", h + "attn.c_attn.weight#v", 1, False),
        E("layers.bq", h + "attn.c_attn.bias#q", None),
        E("layers.bk", h + "attn.c_attn.bias#k", None),
        E("layers.bv", h + "attn.c_attn.bias#v", None),
        E("layers.wo", h + "attn.c_proj.weight", 2, False),
        E("layers.bo", h + "attn.c_proj.bias", None),
        E("layers.w_up", h + "mlp.c_fc.weight", 1, False),
        E("layers.b_up", h + "mlp.c_fc.bias", None),
        E("layers.w_down", h + "mlp.c_proj.weight", 1, False),
        E("layers.b_down", h + "mlp.c_proj.bias", None),
    ]
    if not m.tied_embeddings:
        out.append(E("unembed", "lm_head.weight", 1))
    return out


def _to_hf(a: np.ndarray, e: _Entry) -> np.ndarray:
    """One of our (per-layer) weights in HF's layout."""
    if e.n_in is None:
        return a.reshape(-1)
    if e.n_in == 0:  # an embedding table: the same [rows, D] both sides
        return a
    a2 = a.reshape(math.prod(a.shape[: e.n_in]), -1)
    return np.ascontiguousarray(a2.T) if e.linear else a2


def _hf_shape(shape: tuple[int, ...], e: _Entry) -> tuple[int, ...]:
    return _to_hf(np.empty(shape, np.uint8), e).shape


def _from_hf(a: np.ndarray, e: _Entry, shape: tuple[int, ...]) -> np.ndarray:
    if e.n_in not in (None, 0) and e.linear:
        a = a.T
    return np.ascontiguousarray(a).reshape(shape)


def _our_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    # lazy, as every jax-using import here: `lm import-hf --help` and the config checks
    # before any weight is read need none of them
    from flax.traverse_util import flatten_dict

    from lm.model import transformer

    specs = flatten_dict(transformer.param_specs(m), sep=".")
    return {k: v.shape for k, v in specs.items()}


# ---------------------------------------------------------------- safetensors files


_ST_DTYPES = {k: v for k, v in tensorfile.DTYPES.items() if k != "U8"}  # the float ones


def _read_header(path: Path) -> tensorfile.Header:
    try:
        with path.open("rb") as f:
            return tensorfile.read_header(f, path.stat().st_size, _ST_DTYPES)
    except OSError as e:
        raise HFError(f"{path}: cannot read ({e.strerror or e})") from None
    except tensorfile.SafetensorsError as e:
        raise HFError(f"{path}: not a safetensors file ({e})") from None


def _weight_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / WEIGHTS_INDEX
    if index.is_file():
        _inside(hf_dir, WEIGHTS_INDEX, str(index))
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            raise HFError(f"{index}: no weight_map of tensor names to shard files") from None
        names = list(dict.fromkeys(weight_map.values()))
        files = [_inside(hf_dir, n, f"{index}: weight_map") for n in names]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise HFError(f"{index}: shard {missing[0].name} is missing")
        return sorted(files)
    if (hf_dir / WEIGHTS).is_file():
        return [_inside(hf_dir, WEIGHTS, str(hf_dir / WEIGHTS))]
    if any(hf_dir.glob("*.bin")) or any(hf_dir.glob("*.pt")):
        raise HFError(
            f"{hf_dir}: only pickled weights (*.bin); convert them to safetensors first "
            "(pickles can run code, so they are never loaded here)"
        )
    raise HFError(f"{hf_dir}: no {WEIGHTS} or {WEIGHTS_INDEX}")


class _Tensors:
    """Tensor headers of every shard now (checked against their files); bytes only when a tensor
    is asked for."""

    def __init__(self, files: list[Path]):
        self.where: dict[str, tuple[Path, int, tensorfile.Tensor]] = {}
        for f in files:
            header = _read_header(f)
            for name, t in header.tensors.items():
                self.where[name] = (f, header.data_start, t)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name][2].shape

    def get(self, name: str) -> np.ndarray:
        f, start, t = self.where[name]
        raw = np.fromfile(
            f, np.dtype(_ST_DTYPES[t.dtype]), math.prod(t.shape), offset=start + t.begin
        )
        return tensorfile.as_float32(raw, t.dtype).reshape(t.shape)


def _canonical_names(names: list[str], family: str) -> dict[str, str]:
    """{name as our table spells it: name in the file}; files saved from the bare base model
    (GPT2Model, LlamaModel) lack the `transformer.` / `model.` prefix."""
    prefix = "model." if family == "llama" else "transformer."
    out = {}
    for n in names:
        full = n if n.startswith((prefix, "lm_head.")) else prefix + n
        out[full] = n
    return out


def read_params(
    hf_dir: str | Path, m: ModelConfig, family: str, hf: dict | None = None
) -> dict[str, Any]:
    """Our params (nested, numpy float32) from the checkpoint's safetensors files."""
    from flax.traverse_util import unflatten_dict

    hf_dir = Path(hf_dir)
    store = _Tensors(_weight_files(hf_dir))
    names = _canonical_names(list(store.where), family)
    shapes = _our_shapes(m)
    L = m.n_layers
    used: set[str] = set()
    D = m.d_model
    qkv = {"q": (0, D), "k": (D, 2 * D), "v": (2 * D, 3 * D)}

    def fetch(hf_name: str, want: tuple[int, ...], read: bool) -> np.ndarray | None:
        base, _, part = hf_name.partition("#")
        if base not in names:
            raise HFError(f"{hf_dir}: tensor {base} is missing from the checkpoint")
        used.add(names[base])
        got = store.shape(names[base])
        lo, hi = qkv[part] if part else (None, None)
        if part:  # one third of GPT-2's fused q|k|v (columns of the weight, entries of the bias)
            want = (*want[:-1], 3 * want[-1])
        if got != want:
            raise HFError(f"{hf_dir}: tensor {base} has shape {list(got)}, expected {list(want)}")
        return store.get(names[base])[..., lo:hi] if read else None

    def build(read: bool) -> dict[str, np.ndarray]:
        flat: dict[str, np.ndarray] = {}
        for e in _entries(m, family, hf):
            if e.ours == "":  # a bias ours lacks; only zeros convert exactly
                for i in range(L):
                    a = fetch(e.hf.format(i=i), (m.ffw_dim,), read)
                    if read and np.any(a):
                        raise HFError(f"{hf_dir}: {e.hf.format(i=i)} is not zero (unsupported)")
                continue
            shape = shapes[e.ours]
            if e.hf is None:
                flat[e.ours] = np.zeros(shape, np.float32) if read else None
            elif e.ours.startswith("layers."):
                per = shape[1:]
                got = [fetch(e.hf.format(i=i), _hf_shape(per, e), read) for i in range(L)]
                flat[e.ours] = np.stack([_from_hf(a, e, per) for a in got]) if read else None
            else:
                a = fetch(e.hf, _hf_shape(shape, e), read)
                flat[e.ours] = _from_hf(a, e, shape) if read else None
        return flat

    build(read=False)  # every name and shape first: a bad file fails before a byte is read
    tied_head = "lm_head.weight" if m.tied_embeddings else None
    extra = [
        n for n in store.where
        if n not in used and not n.endswith(_BUFFERS) and n not in (tied_head,)
    ]  # fmt: skip
    if extra:
        raise HFError(
            f"{hf_dir}: tensor {extra[0]} has no place in a {family} model with this config "
            f"({len(extra)} such tensors)"
        )
    return unflatten_dict(build(read=True), sep=".")


def hf_tensors(params: dict[str, Any], m: ModelConfig) -> dict[str, np.ndarray]:
    """Our params as HF-named float32 tensors (GPT-2 biases our model lacks are zeros), muP's
    multipliers folded in (`fold_mup`)."""
    from flax.traverse_util import flatten_dict

    family = _family(m)
    flat = {k: np.asarray(v, np.float32) for k, v in flatten_dict(params, sep=".").items()}
    flat = fold_mup(flat, m)
    shapes = _our_shapes(dataclasses.replace(m, bias=True) if family == "gpt2" else m)
    out: dict[str, np.ndarray] = {}
    for e in _entries(m, family):
        if e.ours == "":
            a = np.zeros((m.n_layers, m.ffw_dim), np.float32)
        elif (a := flat.get(e.ours)) is None:  # a bias-free model in GPT-2's biased layout
            a = np.zeros(shapes[e.ours], np.float32)
        if e.ours == "" or e.ours.startswith("layers."):
            for i in range(m.n_layers):
                out[e.hf.format(i=i)] = _to_hf(a[i], e)
        else:
            out[e.hf] = _to_hf(a, e)
    for name in [n for n in out if n.endswith("#q")]:  # fuse GPT-2's q|k|v back
        base = name[:-2]
        parts = [out.pop(f"{base}#{c}") for c in "qkv"]
        out[base] = np.concatenate(parts, axis=-1)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def fold_mup(flat: dict[str, np.ndarray], m: ModelConfig) -> dict[str, np.ndarray]:
    """Flat params whose plain (sp) forward pass computes m's logits: muP's output multiplier
    folded into the final norm (scale and bias: it multiplies the norm's output), and the
    ratio of its attention scale 1/H to sp's 1/sqrt(H) into the queries (wq, bq). sp: as given."""
    if not mup.is_mup(m):
        return flat
    out, q = dict(flat), mup.attention_scale(m, m.head_dim) * math.sqrt(m.head_dim)
    factors = {"final_norm.scale": mup.output_multiplier(m), "layers.wq": q, "layers.bq": q}
    factors["final_norm.bias"] = factors["final_norm.scale"]
    for k, f in factors.items():
        if k in out:
            out[k] = (out[k] * np.float32(f)).astype(np.float32)
    return out


# ---------------------------------------------------------------- tokenizers


def _special_id(hf_dir: Path, hf: dict, name: str, lookup) -> int | None:
    """config.json's <name>_token_id, else the token string tokenizer_config.json names."""
    v = hf.get(f"{name}_token_id")
    if isinstance(v, list):  # several end tokens (Llama 3): the first is the document end
        v = v[0] if v else None
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        p = hf_dir / fname
        if not p.is_file():
            continue
        _inside(hf_dir, fname, str(p))
        try:
            tok = json.loads(p.read_text()).get(f"{name}_token")
        except (ValueError, AttributeError):
            continue
        if isinstance(tok, dict):
            tok = tok.get("content")
        if isinstance(tok, str) and lookup(tok) is not None:
            return lookup(tok)
    return None


def read_tokenizer(hf_dir: str | Path, hf: dict[str, Any]):
    """The checkpoint's tokenizer as an lm.data.tokenizer.HFTokenizer: tokenizer.model
    (sentencepiece) when present, else tokenizer.json (the `tokenizers` package)."""

    hf_dir = Path(hf_dir)
    sp_path, tj_path = hf_dir / "tokenizer.model", hf_dir / "tokenizer.json"
    for p in (sp_path, tj_path):
        if p.is_file():
            _inside(hf_dir, p.name, str(p))
    if sp_path.is_file():
        import sentencepiece as spm

        data: bytes | str = sp_path.read_bytes()
        backend = "sentencepiece"
        try:
            sp = spm.SentencePieceProcessor(model_proto=data)
        except Exception:
            raise HFError(f"{sp_path}: not a sentencepiece model") from None
        lookup = lambda s: sp.piece_to_id(s) if sp.piece_to_id(s) != sp.unk_id() else None
        defaults = {"bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()}
    elif tj_path.is_file():
        try:
            from tokenizers import Tokenizer as HFTok
        except ImportError:
            raise HFError(
                f"{tj_path}: reading it needs the tokenizers package: pip install 'lm[convert]'"
            ) from None
        data = tj_path.read_text()
        backend = "tokenizers"
        try:
            tk = HFTok.from_str(data)
        except Exception:  # tokenizers' own exception type
            raise HFError(f"{tj_path}: not a tokenizers tokenizer.json") from None
        lookup = tk.token_to_id
        defaults = {}
    else:
        raise HFError(f"{hf_dir}: no tokenizer.model or tokenizer.json")
    ids = {n: _special_id(hf_dir, hf, n, lookup) for n in ("bos", "eos", "pad")}
    ids = {n: v if v is not None and v >= 0 else defaults.get(n) for n, v in ids.items()}
    ids = {n: v if v is not None and v >= 0 else None for n, v in ids.items()}
    if ids["eos"] is None and ids["bos"] is None:
        raise HFError(f"{CONFIG_JSON}: eos_token_id and bos_token_id are missing (no special ids)")
    # GPT-2 has one <|endoftext|> for both ends and no pad; padding is never attended to.
    ids["bos"] = ids["bos"] if ids["bos"] is not None else ids["eos"]
    ids["eos"] = ids["eos"] if ids["eos"] is not None else ids["bos"]
    ids["pad"] = ids["pad"] if ids["pad"] is not None else ids["eos"]
    try:
        return HFTokenizer(backend, data, ids["bos"], ids["eos"], ids["pad"])
    except ValueError as e:
        raise HFError(f"{hf_dir}: tokenizer: {e}") from None


def write_tokenizer(tok, out_dir: Path) -> list[str]:
    """The tokenizer files transformers reads; [] when ours has no HF form (a task's symbols).
    Our ByteTokenizer becomes a byte-level tokenizer.json (lm.interop.hf_tokenizer)."""

    if isinstance(tok, ByteTokenizer):
        (out_dir / "tokenizer.json").write_text(byte_tokenizer_json(), encoding="utf-8")
        (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2))
        return ["tokenizer.json", "tokenizer_config.json"]
    if isinstance(tok, HFTokenizer):
        spec = tok.spec
        if tok.backend == "tokenizers":
            (out_dir / "tokenizer.json").write_text(spec["data"])
            files = ["tokenizer.json"]
        else:
            import base64

            (out_dir / "tokenizer.model").write_bytes(base64.b64decode(spec["data"]))
            files = ["tokenizer.model"]
    elif isinstance(tok, SentencePieceTokenizer):
        (out_dir / "tokenizer.model").write_bytes(tok.proto)
        files = ["tokenizer.model"]
    else:
        return []
    pieces = tok.pieces([tok.bos_id, tok.eos_id, tok.pad_id])
    cfg = {"bos_token": pieces[0], "eos_token": pieces[1], "pad_token": pieces[2]}
    if files == ["tokenizer.model"]:
        cfg |= {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "legacy": False}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return [*files, "tokenizer_config.json"]


# ---------------------------------------------------------------- run directories


def _run_config(m: ModelConfig, tok, overrides: list[str]) -> Config:
    """The run's config: the checkpoint's model, a tokenizer label, training defaults fitted
    to its context, then the user's --set overrides (model keys that change what the weights
    mean are refused)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("model.") and key[6:] not in _MODEL_OVERRIDABLE:
            raise config_lib.ConfigError(
                f"{key}: fixed by the checkpoint's config.json (only model."
                f"{', model.'.join(sorted(_MODEL_OVERRIDABLE))} may be set)"
            )
    # data.tokenizer is only a label once the run directory holds the tokenizer, but validate
    # checks model.vocab_size against tokenizer_vocab.
    vocab = max(_MIN_VOCAB, min(tok.vocab_size, m.vocab_size))
    cfg = Config(
        model=m,
        data=DataConfig(tokenizer="bpe", tokenizer_vocab=vocab),
        train=TrainConfig(seq_len=min(TrainConfig.seq_len, m.max_seq_len)),
    )
    raw = config_lib.apply_overrides(config_lib.to_dict(cfg), overrides)
    return config_lib.from_dict(raw)


def import_hf(hf_dir: str | Path, run_dir: str | Path, overrides: list[str] = ()) -> Path:
    """Write `run_dir` (config.yaml, tokenizer, step-0 checkpoint) from a HF model directory.
    Every check (config fields, tokenizer, tensor names and shapes) runs before any weight is
    read or anything is written."""
    # lazy: jax, orbax and the training stack load only for the import itself
    import jax

    from lm.training import checkpoint, sharding, train
    from lm.training.rundir import prepare_run_dir

    hf_dir, run_dir = Path(hf_dir).expanduser(), Path(run_dir).expanduser()
    if (run_dir / checkpoint.CONFIG_FILE).exists() or (run_dir / checkpoint.CKPT_DIR).exists():
        raise HFError(f"--out {run_dir}: already a run directory; choose a new one")
    hf = read_hf_config(hf_dir)
    m, family = model_config_from_hf(hf)
    if m.vocab_size < _MIN_VOCAB:  # the run's config cannot record a smaller vocabulary
        raise HFError(
            f"{CONFIG_JSON}: vocab_size={m.vocab_size}: lm runs hold at least {_MIN_VOCAB} ids "
            "(256 bytes and 4 specials, data.tokenizer_vocab's minimum)"
        )
    tok = read_tokenizer(hf_dir, hf)
    if tok.vocab_size > m.vocab_size:
        raise HFError(
            f"{CONFIG_JSON}: vocab_size={m.vocab_size} is smaller than the tokenizer's "
            f"{tok.vocab_size} tokens"
        )
    cfg = _run_config(m, tok, list(overrides))
    params = read_params(hf_dir, cfg.model, family, hf)

    mesh = sharding.make_mesh(cfg.mesh)
    lay = train.layout(cfg, mesh)
    dtype = jax.numpy.dtype(cfg.model.param_dtype)

    def make_state(p):
        # A fresh optimizer state around the imported weights, at step 0: `lm train` on this
        # directory resumes from it and `lm train --init-from` branches a new run off it. (The
        # random init inside init_state is unused, and compiled away.)
        p = jax.tree.map(lambda a: a.astype(dtype), p)
        fresh = train.init_state(cfg, lay, cfg.train.seed)
        return {**fresh, "params": p, "opt_state": lay.opt.init(p)}

    state = jax.jit(make_state, out_shardings=lay.shardings)(params)
    with dirlock.hold(run_dir):
        if (run_dir / checkpoint.CONFIG_FILE).exists():  # another import got here first
            raise HFError(f"--out {run_dir}: already a run directory; choose a new one")
        prepare_run_dir(cfg, run_dir)
        save_tokenizer(tok, run_dir)
        mgr = checkpoint.manager(run_dir, keep=cfg.train.keep_ckpts)
        checkpoint.save(mgr, 0, state)
        checkpoint.finish(mgr)
        mgr.close()
        (run_dir / "imported_from.json").write_text(
            json.dumps({"path": str(hf_dir.absolute()), "model_type": hf.get("model_type")}) + "\n"
        )
    return run_dir


def export_hf(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Write a run's checkpoint as a HF model directory (config.json, model.safetensors,
    generation_config.json and the tokenizer where it has a HF form)."""
    import safetensors.numpy

    from lm.training import checkpoint  # lazy: orbax and jax load only for the export itself

    run_dir, out_dir = Path(run_dir).expanduser(), Path(out_dir).expanduser()
    cfg_path = run_dir / checkpoint.CONFIG_FILE
    if not cfg_path.is_file():
        raise HFError(f"--run {run_dir}: not a run directory (no {checkpoint.CONFIG_FILE})")
    cfg = config_lib.load(cfg_path)
    if cfg.kind != "transformer":
        raise HFError(f"kind={cfg.kind!r}: only transformer runs have a Hugging Face form")
    hf_config_from_model(cfg.model)  # refuses what neither architecture holds, before loading
    cfg, params, tok = checkpoint.load_run(run_dir, step=step)
    config = hf_config_from_model(cfg.model, tok)
    tensors = hf_tensors(jax_to_numpy(params), cfg.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    # transformers reads only files whose metadata says which framework wrote them
    atomic_write(out_dir / WEIGHTS, safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    (out_dir / CONFIG_JSON).write_text(json.dumps(config, indent=2) + "\n")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    write_tokenizer(tok, out_dir)
    return out_dir


def jax_to_numpy(tree: Any) -> Any:
    import jax

    return jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), tree)
