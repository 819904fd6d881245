"""`lm import-hf` / `lm export-hf`: tiny random Llama and GPT-2 models built with transformers
(the independent reference) give the same logits and greedy tokens after import, and load back
into transformers with the same logits after export; unsupported configs fail in one line."""

import dataclasses
import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REASON = "needs the optional extra: pip install -e '.[convert]' (transformers, tokenizers, torch)"
torch = pytest.importorskip("torch", reason=REASON)
transformers = pytest.importorskip("transformers", reason=REASON)
tokenizers = pytest.importorskip("tokenizers", reason=REASON)

from lm import cli
from lm.data.tokenizer import HFTokenizer, load_tokenizer
from lm.inference import sampling
from lm.inference.request import GREEDY
from lm.interop import hf
from lm.training import checkpoint

ROOT = Path(__file__).resolve().parents[2]
V = 384
TEXTS = ["def add(a, b):\n    return a + b", "The quick brown fox", "import numpy as np"]


def _corpus() -> list[str]:
    return [p.read_text().encode("ascii", "ignore").decode() for p in (ROOT / "lm").glob("*.py")]


@pytest.fixture(scope="module")
def sp_model():
    """A Llama-style sentencepiece model: unk 0, bos 1, eos 2, no pad, dummy prefix."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for t in _corpus() for line in t.splitlines() if line),
        model_writer=out,
        model_type="bpe",
        vocab_size=V,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


@pytest.fixture(scope="module")
def bpe_json():
    """A GPT-2-style byte-level BPE tokenizer.json, <|endoftext|> as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=V,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_corpus(), trainer)
    return tk.to_str()


LLAMA = dict(
    vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
GPT2 = dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=128)
GPT2 |= dict(bos_token_id=0, eos_token_id=0)
CASES = {
    "llama-gqa-sp": ("llama", dict(num_key_value_heads=2), "sp"),
    "llama3-scaled-mqa-tied-json": (
        "llama",
        dict(
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            # the original context shorter than the prompts, so every band of the rule acts
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),  # fmt: skip
            bos_token_id=0,
            eos_token_id=0,
        ),
        "json",
    ),
    "llama-linear-bias-sp": (
        "llama",
        dict(rope_scaling=dict(rope_type="linear", factor=4.0), attention_bias=True),
        "sp",
    ),
    "gpt2-json": ("gpt2", {}, "json"),
    "gpt2-untied-json": ("gpt2", dict(tie_word_embeddings=False), "json"),
}


def _hf_model(family, extra):
    torch.manual_seed(0)
    if family == "llama":
        mdl = transformers.LlamaForCausalLM(transformers.LlamaConfig(**(LLAMA | extra)))
    else:
        mdl = transformers.GPT2LMHeadModel(transformers.GPT2Config(**(GPT2 | extra)))
    with torch.no_grad():  # every weight, norm and bias away from its init, so all of them count
        for p in mdl.parameters():
            p.add_(0.15 * torch.randn_like(p))
    return mdl.eval()


def _hf_logits(mdl, tokens_BT):
    with torch.no_grad():
        return mdl(torch.tensor(np.asarray(tokens_BT), dtype=torch.long)).logits.numpy()


def _prompts(tok):
    """Token rows (BOS + text, and a random one longer than the llama3 case's original
    context) right-padded to one length: one compile, and padding after a row's end cannot
    change its logits (causal)."""
    rows = [[tok.bos_id, *tok.encode(t)] for t in TEXTS]
    rows.append(np.random.RandomState(0).randint(0, V, 100).tolist())
    T = max(map(len, rows))
    return np.array([r + [tok.pad_id] * (T - len(r)) for r in rows]), [len(r) for r in rows]


@pytest.fixture(scope="module", params=list(CASES))
def imported(request, tmp_path_factory, sp_model, bpe_json):
    family, extra, tok_kind = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    mdl = _hf_model(family, extra)
    mdl.save_pretrained(tmp / "hf")
    if tok_kind == "sp":
        (tmp / "hf" / "tokenizer.model").write_bytes(sp_model)
    else:
        (tmp / "hf" / "tokenizer.json").write_text(bpe_json)
    (tmp / "data.txt").write_text("\n\n".join(_corpus()[:4]))
    sets = [
        f"data.source={tmp / 'data.txt'}", f"data.cache_dir={tmp / 'cache'}",
        "train.seq_len=32", "train.batch_size=2", "train.steps=2", "train.warmup_steps=1",
        "train.log_every=1", "train.eval_every=2", "train.eval_windows=2", "train.ckpt_every=2",
        "train.steps_per_call=1", "train.peak_flops=1e11", "train.lr=1e-4",
    ]  # fmt: skip
    assert cli.main(["import-hf", str(tmp / "hf"), "--out", str(tmp / "run"), "--set", *sets]) == 0
    cfg, params, tok = checkpoint.load_run(tmp / "run")
    return dict(name=request.param, tmp=tmp, mdl=mdl, cfg=cfg, params=params, tok=tok)


def test_logits_match_transformers(imported):
    from lm.model import transformer

    cfg, tok = imported["cfg"], imported["tok"]
    tokens_BT, lens = _prompts(tok)
    ours = np.asarray(transformer.apply(imported["params"], jnp.asarray(tokens_BT), cfg.model))
    theirs = _hf_logits(imported["mdl"], tokens_BT)
    assert np.abs(theirs).max() > 1.0  # logits with spread: a real comparison
    for b, n in enumerate(lens):
        np.testing.assert_allclose(ours[b, :n], theirs[b, :n], atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(imported):
    cfg, tok, mdl = imported["cfg"], imported["tok"], imported["mdl"]
    prompt = [tok.bos_id, *tok.encode(TEXTS[0])]
    n = 24
    ours = sampling.generate(
        imported["params"], cfg.model, [prompt], jax.random.PRNGKey(0), n, GREEDY,
        pad_id=tok.pad_id,
    )[0]  # fmt: skip
    mdl.generation_config.eos_token_id = None  # exactly n tokens, as ours without eos_id
    mdl.generation_config.pad_token_id = tok.pad_id
    with torch.no_grad():
        out = mdl.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False, max_new_tokens=n,
        )  # fmt: skip
    assert ours == out[0, len(prompt) :].tolist()


def test_export_loads_in_transformers(imported):
    tmp, mdl = imported["tmp"], imported["mdl"]
    assert cli.main(["export-hf", "--run", str(tmp / "run"), "--out", str(tmp / "exp")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp / "exp").eval()
    assert type(back) is type(mdl)
    fast = transformers.AutoTokenizer.from_pretrained(tmp / "exp")
    want = imported["tok"].encode(TEXTS[1])
    assert fast.encode(TEXTS[1], add_special_tokens=False) == want
    tokens_BT, _ = _prompts(imported["tok"])
    np.testing.assert_allclose(_hf_logits(back, tokens_BT), _hf_logits(mdl, tokens_BT), atol=1e-5)
    # and it imports again to the same params
    assert cli.main(["import-hf", str(tmp / "exp"), "--out", str(tmp / "again")]) == 0
    _, params2, tok2 = checkpoint.load_run(tmp / "again")
    for a, b in zip(jax.tree.leaves(imported["params"]), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert tok2 == imported["tok"]


def test_tokenizer_is_the_checkpoints(imported, sp_model, bpe_json):
    tok = imported["tok"]
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == V
    if tok.backend == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=sp_model)
        want = [sp.encode(t) for t in TEXTS]
        assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)  # no pad piece: eos pads
    else:
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tokenizers.Tokenizer.from_str(bpe_json)
        )
        want = [fast.encode(t, add_special_tokens=False) for t in TEXTS]
        assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 0, 0)
    assert [tok.encode(t) for t in TEXTS] == want
    # (Llama-style sentencepiece normalizes whitespace runs, so only a plain sentence comes back)
    assert tok.decode(tok.encode(TEXTS[1])) == TEXTS[1]
    tb = tok.token_bytes()
    assert tb[tok.eos_id] == 0 and tb.sum() > V
    ids = tok.encode(TEXTS[0])
    if tok.backend == "tokenizers":  # byte-level: every id's bytes, exactly
        assert tb[ids].sum() == len(TEXTS[0].encode())


def test_run_directory_works_with_the_commands(imported, capsys):
    """sample, inspect, eval and fine-tuning with train, on the imported run (one case: they
    share all the code past the import)."""
    if imported["name"] != "llama-gqa-sp":
        pytest.skip("one case is enough")
    run = str(imported["tmp"] / "run")
    assert cli.main(["sample", "--run", run, "--prompt", "def", "--temperature", "0",
                     "--max-new-tokens", "5"]) == 0  # fmt: skip
    out = str(imported["tmp"] / "inspect")
    assert (
        cli.main(["inspect", "--run", run, "--prompt", "def", "--tokens", "3", "--out", out]) == 0
    )
    assert cli.main(["eval", "--run", run, "--windows", "2"]) == 0
    assert "val_loss" in capsys.readouterr().out
    # fine-tune in place (resumes the step-0 checkpoint) and as a new run branched off it
    assert cli.main(["train", "--out", run, "--no-progress", "--sample-tokens", "0"]) == 0
    new = str(imported["tmp"] / "ft")
    argv = ["train", "--init-from", run, "--out", new, "--no-progress", "--sample-tokens", "0"]
    assert cli.main([*argv, "--set", "train.lr=3e-4"]) == 0
    metrics = [json.loads(x) for x in (Path(new) / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and np.isfinite(metrics[-1]["val_loss"])


# ---------------------------------------------------------------- errors


def _config_only(tmp_path, family, **fields):
    """A model directory with a config.json and no weights at all: errors about the config
    must come before any weight is looked for."""
    base = (
        dict(model_type="llama", **LLAMA) if family == "llama" else dict(model_type="gpt2", **GPT2)
    )
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(base | fields))
    return d


@pytest.mark.parametrize(
    "family, fields, culprit",
    [
        ("llama", dict(model_type="bert"), "model_type='bert'"),
        ("llama", dict(rope_scaling=dict(rope_type="yarn", factor=4.0)), "rope_type='yarn'"),
        ("llama", dict(rope_parameters=dict(rope_type="dynamic", rope_theta=1e4)), "'dynamic'"),
        ("llama", dict(head_dim=32), "head_dim=32"),
        ("llama", dict(hidden_act="gelu"), "hidden_act='gelu'"),
        ("llama", dict(model_type="mistral", sliding_window=64), "sliding_window=64"),
        ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        ("gpt2", dict(activation_function="relu"), "activation_function='relu'"),
        ("llama", dict(hidden_size=None), "hidden_size is missing"),
    ],
)
def test_unsupported_config_fields_named(tmp_path, capsys, family, fields, culprit):
    d = _config_only(tmp_path, family, **fields)
    assert cli.main(["import-hf", str(d), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert culprit in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_bad_files_named(tmp_path, capsys, sp_model):
    d = _config_only(tmp_path, "llama")
    (d / "tokenizer.model").write_bytes(sp_model)
    (d / "pytorch_model.bin").write_bytes(b"not read")
    assert cli.main(["import-hf", str(d), "--out", str(tmp_path / "run")]) == 2
    assert "pickle" in capsys.readouterr().err
    assert cli.main(["import-hf", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    assert "config.json" in capsys.readouterr().err
    # a weight file whose tensors do not fit the config
    mdl = _hf_model("llama", dict(num_key_value_heads=2))
    mdl.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg | {"num_key_value_heads": 4}))
    (tmp_path / "m" / "tokenizer.model").write_bytes(sp_model)
    assert cli.main(["import-hf", str(tmp_path / "m"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "k_proj.weight has shape [32, 64], expected [64, 64]" in err
    # model keys that change what the weights mean cannot be overridden
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    argv = ["import-hf", str(tmp_path / "m"), "--out", str(tmp_path / "r3")]
    assert cli.main([*argv, "--set", "model.d_ff=64"]) == 2
    assert "model.d_ff" in capsys.readouterr().err


def test_sharded_checkpoint(tmp_path, sp_model):
    mdl = _hf_model("llama", dict(num_key_value_heads=2))
    mdl.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    (tmp_path / "hf" / "tokenizer.model").write_bytes(sp_model)
    cfg, family = hf.model_config_from_hf(hf.read_hf_config(tmp_path / "hf"))
    params = hf.read_params(tmp_path / "hf", cfg, family)
    mdl.save_pretrained(tmp_path / "one")
    one = hf.read_params(tmp_path / "one", cfg, family)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(one), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_weights_widen_exactly(tmp_path):
    mdl = _hf_model("gpt2", {}).to(torch.bfloat16)
    mdl.save_pretrained(tmp_path / "hf")
    cfg, family = hf.model_config_from_hf(hf.read_hf_config(tmp_path / "hf"))
    params = hf.read_params(tmp_path / "hf", cfg, family)
    want = mdl.transformer.wte.weight.float().detach().numpy()
    np.testing.assert_array_equal(params["embed"], want)


def test_export_refuses_what_neither_architecture_holds(tmp_path, capsys):
    from lm import config

    run = tmp_path / "run"
    run.mkdir()
    cfg = config.load(None, ["preset=llama", "model.norm=layernorm"])
    (run / "config.yaml").write_text(config.dump(cfg))
    assert cli.main(["export-hf", "--run", str(run), "--out", str(tmp_path / "x")]) == 2
    assert "model.norm='layernorm'" in capsys.readouterr().err


def test_tokenizer_saved_and_loaded(tmp_path, bpe_json, sp_model):
    from lm.data.tokenizer import save_tokenizer

    for tok in (
        HFTokenizer("tokenizers", bpe_json, 0, 0, 0),
        HFTokenizer("sentencepiece", sp_model, 1, 2, 2),
    ):
        save_tokenizer(tok, tmp_path)
        back = load_tokenizer(tmp_path)
        assert back == tok and back.identity == tok.identity
        assert back.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    with pytest.raises(ValueError, match="bos_id=999"):
        HFTokenizer("tokenizers", bpe_json, 999, 0, 0)


def test_model_file_export_of_an_imported_run_is_refused_by_name(imported, capsys):
    """`lm export` writes the numpy runner's format, which has no HF tokenizers: a clear error."""
    if type(imported["tok"]).__name__ != "HFTokenizer":
        pytest.skip("this case's tokenizer exports")
    out = imported["tmp"] / "model.lm"
    assert cli.main(["export", "--run", str(imported["tmp"] / "run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "HFTokenizer" in err and "export-hf" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_export_of_a_mup_model_folds_its_multipliers(tmp_path, preset):
    """HF has no muP: the export folds the output multiplier 1/m into the final norm and the
    attention's 1/H (HF divides by sqrt(H)) into wq and bq, and transformers computes our
    logits. GPT-2: tied, LayerNorm with bias; Llama: untied, GQA, RoPE, with biases."""
    import safetensors.numpy

    from lm import config
    from lm.model import transformer

    sets = [f"preset={preset}", "model.d_model=64", "model.n_heads=4", f"model.vocab_size={V}",
            "model.parametrization=mup", "model.mup_base_width=16",
            "model.init_std=0.2"]  # fmt: skip
    if preset == "llama":
        sets += ["model.n_kv_heads=2", "model.bias=true"]
    m = config.load(None, sets).model
    rng = np.random.RandomState(0)
    params = jax.tree.map(
        lambda a: np.asarray(a) + 0.1 * rng.standard_normal(a.shape).astype(np.float32),
        transformer.init(m, jax.random.key(0)),
    )
    (tmp_path / hf.CONFIG_JSON).write_text(json.dumps(hf.hf_config_from_model(m)))
    tensors = hf.hf_tensors(params, m)
    safetensors.numpy.save_file(tensors, tmp_path / hf.WEIGHTS, metadata={"format": "pt"})
    mdl = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens_BT = np.random.RandomState(1).randint(0, V, (2, 24))
    ours = np.asarray(transformer.apply(params, jnp.asarray(tokens_BT), m))
    assert np.abs(ours).max() > 1.0  # logits with spread: a real comparison
    np.testing.assert_allclose(_hf_logits(mdl, tokens_BT), ours, atol=1e-4, rtol=0)
    # the fold is what makes them agree: unfolded, the same weights compute other logits
    plain = hf.hf_tensors(params, dataclasses.replace(m, parametrization="sp"))
    mdl.load_state_dict({k: torch.from_numpy(v) for k, v in plain.items()}, strict=False)
    assert np.abs(_hf_logits(mdl, tokens_BT) - ours).max() > 0.1
