"""`lm inspect` and `lm embed-sim`: the recorded forward pass is the model's, the numbers
printed are the model's numbers, and the figures get written."""

import json

import chex
import jax
import numpy as np
import pytest
from flax import traverse_util
from tiny import tiny_cfg

from lm import cli, config
from lm.inference import inspection, numpy_runner, sampling
from lm.inference.request import GREEDY, SamplingParams
from lm.model import rope, transformer
from lm.training import checkpoint, loop

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    loop.train_run(tiny_cfg(tmp), tmp / "run", progress=False, print_fn=lambda *_: None)
    cfg, params, tok = checkpoint.load_run(tmp / "run")
    return tmp / "run", cfg, params, tok


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_recorded_forward_is_model_apply(trained):
    _, cfg, params, tok = trained
    tokens = [tok.bos_id, *tok.encode(PROMPT)]
    rec = inspection.recorded_forward(params, cfg.model, tokens)
    ref = np.asarray(transformer.apply(params, np.asarray([tokens]), cfg.model))[0]
    np.testing.assert_allclose(rec["logits"], ref, rtol=1e-5, atol=1e-5)
    T, L, N = len(tokens), cfg.model.n_layers, cfg.model.n_heads
    chex.assert_shape(rec["layers"], (L, T, cfg.model.d_model))
    w = rec["attention"]
    chex.assert_shape(w, (L, N, T, T))
    np.testing.assert_allclose(w.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(w, 1) == 0)  # causal: nothing attends to a later position


def test_attention_heads_are_in_query_head_order():
    """With grouped-query attention, head n must be query head n (kv head n // G): checked
    against attention computed by hand for layer 0 of a random llama-like model."""
    cfg = config.load(
        None,
        ["preset=llama", "model.n_layers=1", "model.d_model=32", "model.n_heads=4"]
        + ["model.n_kv_heads=2", "model.max_seq_len=16", "train.seq_len=16"],
    )
    params = jax.jit(transformer.init, static_argnums=0)(cfg.model, jax.random.PRNGKey(0))
    params["layers"]["wq"] = params["layers"]["wq"] * 20  # peaked patterns, heads distinct
    tokens = [257, 1, 2, 3, 4, 5, 6]
    rec = inspection.recorded_forward(params, cfg.model, tokens)
    m = config.to_dict(cfg)["model"]
    flat = traverse_util.flatten_dict(params["layers"], sep=".")  # layer 0 as the file names it
    p = {k: np.asarray(v)[0] for k, v in flat.items()}
    x_TD = numpy_runner.norm(np.asarray(params["embed"])[tokens], p, "attn_norm", m)
    pos_T = np.arange(len(tokens))
    freq_h = rope.frequencies(8, m)
    q_TNH = rope.rotate(np.einsum("TD,DNH->TNH", x_TD, p["wq"]), pos_T, freq_h)
    k_TKH = rope.rotate(np.einsum("TD,DKH->TKH", x_TD, p["wk"]), pos_T, freq_h)
    for n in range(4):
        s_TS = q_TNH[:, n] @ k_TKH[:, n // 2].T / np.sqrt(8)
        s_TS = np.where(np.tril(np.ones_like(s_TS)) > 0, s_TS, -np.inf)
        want = np.stack([_softmax(row) for row in s_TS])
        np.testing.assert_allclose(rec["attention"][0, n], want, atol=1e-4)


def test_explain_prints_the_walk_and_writes_figures(trained, tmp_path):
    _, cfg, params, tok = trained
    lines = []
    out = inspection.explain(cfg, params, tok, PROMPT, SamplingParams(temperature=1.0), seed=1,
                             out_dir=tmp_path, print_fn=lines.append)  # fmt: skip
    text = "\n".join(lines)
    for heading in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5."):
        assert heading in text
    assert "pos_embed" in text and f"[V={cfg.model.vocab_size}, D=32]" in text
    tokens = [tok.bos_id, *tok.encode(PROMPT)]
    assert out["tokens"] == tokens and out["pieces"] == tok.pieces(tokens)
    assert out["logits_shape"] == [len(tokens), cfg.model.vocab_size]
    assert out["layer_shapes"] == [[len(tokens), 32]] * 2
    assert out["first_vector"] == np.asarray(params["embed"])[tok.bos_id].tolist()

    logits = np.asarray(transformer.apply(params, np.asarray([tokens]), cfg.model))[0, -1]
    probs = _softmax(logits.astype(np.float64))
    top = out["top"]
    assert len(top) == 10 and sum(r["prob"] for r in top) <= 1 + 1e-9
    assert [r["id"] for r in top] == list(np.argsort(-probs, kind="stable")[:10])
    np.testing.assert_allclose([r["prob"] for r in top], np.sort(probs)[::-1][:10], rtol=1e-5)
    assert out["greedy"] == top[0]["id"] and 0 <= out["sampled"] < cfg.model.vocab_size
    assert 1 <= len(out["continuation"]) <= 32 - len(tokens)

    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["attention_layer0.png", "attention_layer1.png", "top_tokens.png"]
    assert sorted(out["pngs"]) == sorted(str(tmp_path / p) for p in pngs)
    for p in pngs:
        assert (tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_embedding_similarity_matches_numpy(trained, tmp_path):
    _, _, params, tok = trained
    words = ["def", "class", "def", "x"]
    out = inspection.embedding_similarity(params, tok, words, tmp_path / "pca.png")
    cos = np.asarray(out["cosine"])
    embed = np.asarray(params["embed"], np.float64)
    vecs = np.stack([embed[tok.encode(w)].mean(0) for w in words])
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, unit @ unit.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(cos), 1, atol=1e-12)
    assert cos[0, 2] == pytest.approx(1) and np.allclose(cos, cos.T)
    pca = np.asarray(out["pca"])
    assert pca.shape == (4, 2) and np.allclose(pca[0], pca[2])  # same word, same point
    assert (tmp_path / "pca.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_inspect_and_embed_sim(trained, tmp_path, capsys):
    run_dir = trained[0]
    args = ["inspect", "--run", str(run_dir), "--prompt", "x = ", "--out", str(tmp_path / "i")]
    assert cli.main([*args, "--tokens", "5"]) == 0
    said = capsys.readouterr().out
    assert "top 10 hold" in said and (tmp_path / "i" / "top_tokens.png").is_file()

    png = tmp_path / "e.png"
    assert cli.main(["embed-sim", "--run", str(run_dir), "if", "for", "--out", str(png)]) == 0
    said = capsys.readouterr().out
    assert "'if'" in said and "1.000" in said and png.is_file()
    assert cli.main(["embed-sim", "--run", str(run_dir), "if", "for", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["words"] == ["if", "for"] and result["cosine"][0][0] == pytest.approx(1)

    for bad in (["inspect", "--run", str(run_dir), "--prompt", "x" * 40], ["embed-sim", "--run",
                str(run_dir), "ok", ""]):  # fmt: skip
        assert cli.main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


def test_one_draw_gives_the_sampled_token_and_its_continuation(trained):
    _, cfg, params, tok = trained
    lines = []
    sp = SamplingParams(temperature=1.2, top_k=50)
    out = inspection.explain(cfg, params, tok, "class Foo", sp, seed=3, continuation_tokens=8,
                             print_fn=lines.append)  # fmt: skip
    tokens = out["tokens"]
    assert out["continuation"][0] == out["sampled"]  # the same random draw
    key = jax.random.PRNGKey(3)
    ids = dict(eos_id=tok.eos_id, pad_id=tok.pad_id)
    sampled = sampling.generate(params, cfg.model, [tokens], key, 8, sp, **ids)[0]
    greedy = sampling.generate(params, cfg.model, [tokens], key, 8, GREEDY, **ids)[0]
    assert out["continuation"] == sampled and out["greedy_continuation"] == greedy
    # p is the probability in the distribution it was drawn from: temperature, then top-k
    logits = np.asarray(transformer.apply(params, np.asarray([tokens]), cfg.model), np.float64)[
        0, -1
    ]
    z = logits / 1.2
    z = np.where(z >= np.sort(z)[-50], z, -np.inf)
    assert out["sampled_p"] == pytest.approx(_softmax(z)[out["sampled"]], rel=1e-4)
    text = "\n".join(lines)
    assert f"ids: {' '.join(map(str, out['continuation']))}" in text
    assert f"ids: {' '.join(map(str, out['greedy_continuation']))}" in text
    assert "in the distribution it was drawn from" in text


@pytest.fixture
def glyphs_are_errors():
    """matplotlib warns 'Glyph ... missing from font(s)'; here that fails the test."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing from font")
        yield


def test_japanese_figures_have_every_glyph(trained, tmp_path, glyphs_are_errors):
    from matplotlib.figure import Figure

    from lm.util import fonts

    if fonts.cjk_font_path() is None:
        pytest.skip("no CJK font: pip install matplotlib-fontja (a core dependency)")
    # the check can fail: DejaVu Sans alone has no kana
    with pytest.raises(UserWarning, match="missing from font"):
        fig = Figure()
        fig.subplots().set_title("こんにちは", family="DejaVu Sans")
        fig.savefig(tmp_path / "tofu.png")
    _, cfg, params, tok = trained
    out = inspection.explain(cfg, params, tok, "こんにちは、世界", out_dir=tmp_path / "i",
                          continuation_tokens=2, print_fn=lambda *_: None)  # fmt: skip
    assert out["labels"][1:4] == ["こ[E3]", "こ[81]", "こ[93]"] and len(out["pngs"]) == 3
    sim = inspection.embedding_similarity(params, tok, ["猫", "犬", "cat"], tmp_path / "pca.png")
    assert (tmp_path / "pca.png").is_file() and sim["words"][0] == "猫"


def test_prompt_dash_reads_stdin_and_embed_sim_notes_what_it_measures(
    trained, capsys, monkeypatch, tmp_path
):
    import io

    run_dir = str(trained[0])
    monkeypatch.setattr("sys.stdin", io.StringIO("def "))
    args = ["sample", "--run", run_dir, "--prompt", "-", "--temperature", "0"]
    assert cli.main([*args, "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def ") and "-----" not in out
    monkeypatch.setattr("sys.stdin", io.StringIO("x = "))
    args = ["inspect", "--run", run_dir, "--prompt", "-", "--out", str(tmp_path / "i")]
    assert cli.main([*args, "--tokens", "2"]) == 0
    assert "'x = ' is 5 tokens" in capsys.readouterr().out
    assert cli.main(["embed-sim", "--run", run_dir, "if", "for"]) == 0
    assert "shared letters" in capsys.readouterr().out
