import dataclasses
from pathlib import Path

import pytest

from lm import config
from lm.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _err(overrides, raw=None):
    with pytest.raises(ConfigError) as e:
        config.from_dict(config.apply_overrides(raw or {}, overrides))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "override, culprit",
    [
        (["model.d_model=100", "model.n_heads=3"], "model.d_model=100"),
        (["model.n_heads=4", "model.n_kv_heads=3"], "model.n_heads=4"),
        (["train.lr=0"], "train.lr=0.0"),
        (["train.lr=-1e-3"], "train.lr=-0.001"),
        (["train.seq_len=512", "model.max_seq_len=256"], "train.seq_len=512"),
        (["data.source=/no/such/corpus"], "data.source='/no/such/corpus'"),
        (["data.source=/no/such/*.txt"], "data.source='/no/such/*.txt'"),
        (["train.batch_size=30", "train.grad_accum=4"], "train.batch_size=30"),
        (["model.norm=batchnorm"], "model.norm='batchnorm'"),
        (["train.steps=ten"], "train.steps='ten'"),
        (["train.lr=fast"], "train.lr='fast'"),
        (["model.tied_embeddings=maybe"], "model.tied_embeddings='maybe'"),
        (["data.tokenizer=bpe", "data.tokenizer_vocab=4096"], "model.vocab_size=259"),
        (["mesh.data=-1", "mesh.fsdp=-1"], "mesh"),
        (["train.beta2=1.0"], "train.beta2=1.0"),
        # values that pass a `> 0` check yet cannot be trained with
        (["train.seed=-1"], "train.seed=-1"),
        (["train.seed=1e20"], "train.seed=100000000000000000000"),
        (["train.lr=inf"], "train.lr=inf"),
        (["model.init_std=.inf"], "model.init_std=inf"),
        (["train.peak_flops=inf"], "train.peak_flops=inf"),
        (["model.d_model=1e30"], "model.d_model="),
        (["preset=llama", "model.rope_theta=-10000"], "model.rope_theta=-10000.0"),
        (["preset=gpt2", "model=3"], "model: expected a mapping, got 3"),
        (["data.source=~no-such-user-here/corpus"], "data.source='~no-such-user-here/corpus'"),
        (["data.cache_dir=~no-such-user-here"], "data.cache_dir='~no-such-user-here'"),
    ],
)
def test_bad_values_name_the_key(override, culprit):
    assert culprit in _err(override)


def test_unknown_key_is_named():
    assert "model.d_modle" in _err(["model.d_modle=64"])
    assert "trian" in _err(["trian.lr=1"])


def test_override_without_equals():
    assert "train.lr" in _err(["train.lr"])


def test_overrides_and_types():
    cfg = config.load(None, ["model.d_model=256", "train.lr=3e-4", "model.n_kv_heads=2"])
    assert cfg.model.d_model == 256 and cfg.train.lr == 3e-4 and cfg.model.n_kv_heads == 2
    assert isinstance(cfg.train.lr, float)
    cfg = config.load(None, ["model.n_kv_heads=none", "train.peak_flops=1.5e11"])
    assert cfg.model.n_kv_heads is None and cfg.train.peak_flops == 1.5e11


def test_presets_fill_unset_model_keys():
    cfg = config.from_dict({"preset": "llama", "model": {"d_model": 64, "n_heads": 4}})
    assert (cfg.model.norm, cfg.model.positions, cfg.model.mlp) == ("rmsnorm", "rope", "swiglu")
    assert not cfg.model.tied_embeddings
    cfg = config.from_dict({"preset": "llama", "model": {"norm": "layernorm"}})
    assert cfg.model.norm == "layernorm"  # the file wins over the preset


def test_yaml_round_trip_and_frozen(tmp_path):
    cfg = config.load(None, ["model.d_model=96", "model.n_heads=3"])
    p = tmp_path / "c.yaml"
    p.write_text(config.dump(cfg))
    assert config.load(p) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.d_model = 1  # type: ignore[misc]
    assert dataclasses.replace(cfg.model, d_model=48).d_model == 48


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(lst)


def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    files = [f for f in files if "sweeps" not in f.parts]
    # studies with a `base:` run config load through their own scripts (test_experiments.py)
    files = [f for f in files if "base" not in config.read_yaml(f)]
    assert files, "no configs shipped"
    for f in files:
        config.load(f)


# The hand-kept lists lm.training.loop had before field metadata replaced them, as golden values.
OLD_RESUMABLE_KEYS = {
    "train.log_every", "train.eval_every", "train.ckpt_every", "train.keep_ckpts",
    "train.sample_every", "train.sample_tokens", "train.peak_flops", "data.cache_dir",
    "train.steps_per_call", "mesh.data", "mesh.fsdp", "mesh.tensor",
}  # fmt: skip
OLD_NOT_COMPILED_IN = {  # and every data.* key (program_key dropped them by prefix)
    "train.seed", "train.steps", "train.lr", "train.schedule", "train.warmup_steps",
    "train.decay_fraction", "train.min_lr_ratio", "train.log_every", "train.eval_every",
    "train.eval_windows", "train.ckpt_every", "train.keep_ckpts", "train.peak_flops",
    "train.sample_every", "train.sample_tokens",
}  # fmt: skip


def test_key_sets_from_field_metadata_match_the_old_lists():
    flags = config.key_flags()
    assert set(flags) == set(_flat_keys(config.to_dict(config.Config())))
    data_keys = {k for k in flags if k.startswith("data.")}
    assert "data.source" in data_keys and "data.cache_dir" in data_keys
    assert config.resumable_keys() == OLD_RESUMABLE_KEYS
    assert config.uncompiled_keys() == OLD_NOT_COMPILED_IN | data_keys
    assert all(flags[k].resumable for k in flags if k.startswith("mesh."))


def _flat_keys(d, prefix=""):
    for k, v in d.items():
        yield from _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]


@dataclasses.dataclass(frozen=True)
class _Section:
    new_key: int = 0
    host: int = dataclasses.field(default=0, metadata=config.HOST_SIDE)
    pinned: int = dataclasses.field(default=0, metadata={"compiled": True})


@dataclasses.dataclass(frozen=True)
class _Top:
    sec: _Section = dataclasses.field(default_factory=_Section)
    batches: _Section = dataclasses.field(default_factory=_Section, metadata=config.NOT_COMPILED)
    meshy: _Section = dataclasses.field(default_factory=_Section, metadata=config.RESUMABLE)
    new_top: str = "x"


def test_a_new_key_is_compiled_in_and_not_resumable():
    """A key that says nothing lands on the safe side: part of the programs' cache key, and a
    resume refuses a change to it; in a section with metadata, it takes the section's."""
    f = config.key_flags(_Top)
    safe = config.KeyFlags(resumable=False, compiled=True)
    assert f["new_top"] == f["sec.new_key"] == f["sec.pinned"] == safe
    assert f["sec.host"] == f["batches.host"] == f["meshy.host"]
    assert f["sec.host"] == config.KeyFlags(resumable=True, compiled=False)
    assert f["batches.new_key"] == config.KeyFlags(resumable=False, compiled=False)
    assert f["batches.pinned"] == safe  # the key's own metadata wins over its section's
    assert f["meshy.new_key"] == f["meshy.pinned"] == config.KeyFlags(resumable=True)
