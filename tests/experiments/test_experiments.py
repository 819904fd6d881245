"""Synthetic tasks (lm.data.tasks, lm.inference.task_eval), the stage-by-stage forward of
`lm inspect --stages`, and the sort study end to end at a small budget: train, stop, resume,
sample, evaluate."""

import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lm import cli, config
from lm.config import ConfigError
from lm.data import dataset, tasks
from lm.data.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from lm.inference import inspection, task_eval
from lm.inference.request import GREEDY
from lm.model import transformer
from lm.training import checkpoint, loop

REPO = Path(__file__).resolve().parents[2]
SORT_YAML = REPO / "configs" / "experiments" / "sort.yaml"
sys.path.insert(0, str(REPO / "experiments"))


def _data(source, *extra):
    return config.load(None, [f"data.source={source}", *extra, *_fit(source, extra)]).data


def _fit(source, extra):
    """The seq_len and vocab a task needs (validate insists on them)."""
    probe = config.DataConfig(source=source)
    for e in extra:
        k, v = e.split("=", 1)
        probe = dataclasses.replace(probe, **{k.split(".")[1]: config.parse_scalar(v)})
    w = tasks.example_width(probe)
    return [f"train.seq_len={w - 1}", f"model.max_seq_len={w}", "model.vocab_size=16"]


# ---------------------------------------------------------------- tasks


def test_sort_examples_are_sorted_and_deterministic():
    d = _data("task:sort")
    x = tasks.inputs(d, "train", 500)
    assert x.shape == (500, 6) and x.min() == 0 and x.max() == 2
    np.testing.assert_array_equal(x, tasks.inputs(d, "train", 500))  # pure function
    rows = tasks.examples(d, x)
    tok = tasks.tokenizer_for(d)
    assert rows.shape == (500, 14)
    assert (rows[:, 0] == tok.bos_id).all() and (rows[:, -1] == tok.eos_id).all()
    np.testing.assert_array_equal(rows[:, 1:7], x)
    for r in rows:  # sorted by Python, independently of np.sort
        assert list(r[7:13]) == sorted(r[1:7])
    # a longer request extends the shorter one (index order, not a reshuffle)
    np.testing.assert_array_equal(tasks.inputs(d, "train", 800)[:500], x)


@pytest.mark.parametrize("source", ["task:sort", "task:add"])
def test_train_and_heldout_inputs_never_overlap(source):
    d = _data(source, "data.val_fraction=0.25")
    tr, va = tasks.inputs(d, "train", 20000), tasks.inputs(d, "val", 3000)
    seen = {tuple(r) for r in tr}
    assert not seen & {tuple(r) for r in va}
    # the split is by input: every held-out input is one the hash marks as held out
    share = len({tuple(r) for r in va}) / (len({tuple(r) for r in va}) + len(seen))
    if source == "task:sort":  # all 729 inputs occur; a quarter (by hash) are held out
        assert len(seen) + len({tuple(r) for r in va}) == 729
        assert 0.18 < share < 0.32
        held = {tuple(r) for r in tasks.distinct_sort_inputs(d, "val")}
        assert held == {tuple(r) for r in va}
        assert {tuple(r) for r in tasks.distinct_sort_inputs(d, "train")} == seen


def test_addition_answers_are_correct():
    for reverse in (True, False):
        d = _data("task:add", "data.task_min_digits=1", "data.task_max_digits=5",
                  f"data.task_reverse={reverse}")  # fmt: skip
        tok = tasks.tokenizer_for(d)
        x = tasks.inputs(d, "train", 3000)
        digits = {len(str(a)) for a in x[:, 0]}
        assert digits == {1, 2, 3, 4, 5}
        rows = tasks.examples(d, x)
        assert rows.shape[1] == tasks.example_width(d)
        carries = 0
        for (a, b), row in zip(x, rows, strict=True):
            text = tok.decode(row)
            lhs, c = text.split("=")
            sa, sb = lhs.split("+")
            c = c[::-1] if reverse else c
            assert (int(sa), int(sb)) == (a, b) and int(c) == a + b
            assert str(int(c)) == c  # no leading zeros
            carries += len(c) > max(len(sa), len(sb))
            n = len(tasks.prompt(d, (a, b)))
            assert list(row[n : n + len(tasks.answer(d, (a, b)))]) == tasks.answer(d, (a, b))
        assert carries > 100  # the sums that grow a digit are there


@pytest.mark.parametrize("reverse, zero_pad", [(True, False), (False, False), (True, True)])
def test_vectorised_addition_rows_match_the_scalar_reference(reverse, zero_pad):
    d = _data("task:add", "data.task_min_digits=1", "data.task_max_digits=4",
              f"data.task_reverse={reverse}", f"data.task_zero_pad={zero_pad}")  # fmt: skip
    x = np.concatenate([tasks.inputs(d, "train", 500), [[0, 0], [9999, 9999], [1, 9]]])
    want = np.asarray([tasks.add_example(d, int(a), int(b)) for a, b in x])
    np.testing.assert_array_equal(tasks.add_examples(d, x), want)


def test_addition_three_to_five_digits_and_edge_sums():
    d = _data("task:add")
    x = tasks.inputs(d, "val", 2000)
    assert 100 <= x.min() and x.max() <= 99999
    eos = tasks.tokenizer_for(d).eos_id
    assert tasks.answer(d, (99999, 99999)) == [8, 9, 9, 9, 9, 1, eos]
    padded = _data("task:add", "data.task_zero_pad=true")
    assert tasks.prompt(padded, (123, 4567)) == [13, 0, 0, 1, 2, 3, 10, 0, 4, 5, 6, 7, 11]
    assert tasks.answer(padded, (123, 4567)) == [
        0,
        9,
        6,
        4,
        0,
        0,
        eos,
    ]  # 4690 reversed, width 6


def test_symbol_tokenizer_round_trip_and_run_dir(tmp_path):
    for source in ("task:sort", "task:add"):
        d = _data(source)
        tok = build_tokenizer(d)
        ids = list(range(len(tok.symbols))) * 3
        assert tok.encode(tok.decode(ids)) == ids
        save_tokenizer(tok, tmp_path / source[5:])
        back = load_tokenizer(tmp_path / source[5:])
        assert back == tok and back.decode(ids) == tok.decode(ids)
    sort = tasks.tokenizer_for(_data("task:sort"))
    assert sort.encode("C B A B B C") == [2, 1, 0, 1, 1, 2] == sort.encode("CBABBC")
    assert sort.pieces([sort.bos_id, 0, sort.eos_id]) == ["<s>", "A", "</s>"]
    with pytest.raises(ValueError, match="'D' is not a symbol"):
        sort.encode("A D")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text(json.dumps({"kind": "symbols"}))
    with pytest.raises(ValueError, match="bad symbols tokenizer"):
        load_tokenizer(tmp_path / "bad")


def test_batches_are_whole_aligned_examples():
    cfg = config.load(SORT_YAML, ["data.task_train_examples=1000"])
    tok = tasks.tokenizer_for(cfg.data)
    td = dataset.prepare_data(cfg.data, tok)
    b = dataset.batch_at(td.train, 0, 7, 32, 13)
    assert b.shape == (32, 14) and (b[:, 0] == tok.bos_id).all() and (b[:, -1] == tok.eos_id).all()
    np.testing.assert_array_equal(b, dataset.batch_at(td.train, 0, 7, 32, 13))
    halves = [dataset.batch_at(td.train, 0, 7, 32, 13, i, 2) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), b)  # hosts split one global batch
    w = dataset.val_windows(td.val, 10, 13)
    assert (w[:, 0] == tok.bos_id).all()
    with pytest.raises(ValueError, match="train.seq_len=12"):
        dataset.batch_at(td.train, 0, 0, 4, 12)
    with pytest.raises(ValueError, match="task_val_examples"):
        dataset.val_windows(td.val, 5000, 13)


def test_task_fingerprint_follows_the_task_settings():
    a = _data("task:add")
    assert dataset.corpus_fingerprint(a) == dataset.corpus_fingerprint(_data("task:add"))
    for extra in ("data.task_zero_pad=true", "data.task_min_digits=2", "data.val_fraction=0.2"):
        assert dataset.corpus_fingerprint(_data("task:add", extra)) != dataset.corpus_fingerprint(a)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.seq_len=12"], "train.seq_len=12"),
        (["data.source=task:reverse"], "data.source='task:reverse'"),
        (["data.tokenizer=bpe"], "data.tokenizer='bpe'"),
        (["model.vocab_size=5"], "model.vocab_size=5"),
        (["data.task_symbols=1"], "data.task_symbols=1"),
        (["data.task_length=0"], "data.task_length=0"),
    ],
)
def test_bad_task_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        config.load(SORT_YAML, overrides)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_bad_addition_digits_name_the_key():
    base = ["data.source=task:add", "train.seq_len=19", "model.max_seq_len=20"]
    with pytest.raises(ConfigError, match=r"^data.task_min_digits=6"):
        config.load(None, [*base, "data.task_min_digits=6"])
    with pytest.raises(ConfigError, match=r"^data.task_max_digits=10"):
        config.load(None, [*base, "data.task_max_digits=10", "train.seq_len=34"])


def test_every_study_config_loads():
    import bigram_vs_transformer
    import emergence  # noqa: F401  (the script imports cleanly)

    from lm.scaling import sweep

    d = REPO / "configs" / "experiments"
    assert config.load(d / "sort.yaml").data.source == "task:sort"
    raw = bigram_vs_transformer.load_experiment(str(d / "bigram_vs_transformer.yaml"), [])
    cfgs = bigram_vs_transformer.configs(raw)
    assert cfgs["bigram"].kind == "bigram" and len(cfgs) == 4
    widths = [c.model.d_model for c in cfgs.values() if c.kind == "transformer"]
    assert widths == sorted(widths)  # increasing size
    with pytest.raises(ConfigError, match=r"^transformers\[0\] \(1x32\): model.d_model=128"):
        bigram_vs_transformer.configs(raw | {"transformers": [{"name": "1x32", "n_heads": 5}]})
    members = sweep.plan(sweep.load_sweep(d / "emergence.yaml"))
    assert all(m.cfg.data.source == "task:add" for m in members)
    assert len({m.N for m in members}) == 5


# ---------------------------------------------------------------- every stage


@pytest.mark.parametrize("preset, extra", [("gpt2", []), ("llama", ["model.n_kv_heads=1"])])
def test_recorded_stages_reproduce_the_model(preset, extra):
    cfg = config.load(
        None,
        [f"preset={preset}", "model.n_layers=2", "model.d_model=24", "model.n_heads=3"]
        + ["model.max_seq_len=16", "train.seq_len=16", *extra],
    )
    params = jax.jit(transformer.init, static_argnums=0)(cfg.model, jax.random.PRNGKey(1))
    tokens = [257, 5, 9, 30, 5, 7, 100]
    st = inspection.recorded_stages(params, cfg.model, tokens)
    ref = np.asarray(transformer.apply(params, np.asarray([tokens]), cfg.model))[0]
    np.testing.assert_allclose(st["logits"], ref, rtol=1e-5, atol=1e-5)
    rec = inspection.recorded_forward(params, cfg.model, tokens)
    np.testing.assert_allclose(st["x_out"], rec["layers"], atol=1e-5)
    np.testing.assert_allclose(st["attention"], rec["attention"], atol=1e-6)
    np.testing.assert_allclose(st["x_in"][0], rec["embedded"], atol=1e-6)
    np.testing.assert_allclose(st["x_in"][1], st["x_out"][0], atol=0)
    # the residual stream: each layer adds the attention and MLP outputs
    np.testing.assert_allclose(st["x_out"], st["x_in"] + st["attn_out"] + st["mlp_out"], atol=1e-5)
    T, N, K, H = len(tokens), 3, cfg.model.kv_heads, 8
    assert st["q"].shape == (2, T, N, H) and st["k"].shape == (2, T, K, H)
    assert st["mlp_hidden"].shape == (2, T, cfg.model.ffw_dim)
    if preset == "gpt2":  # layer norm at init (unit scale, zero bias): (x - mean) / sqrt(var + eps)
        x = st["x_in"].astype(np.float64)
        want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(st["attn_norm"], want, atol=1e-4)


def test_stages_on_a_large_vocabulary_show_the_top_tokens(tmp_path):
    from lm.data.tokenizer import ByteTokenizer

    cfg = config.load(None, ["model.n_layers=1", "model.d_model=16", "model.n_heads=2"]
                      + ["model.max_seq_len=12", "train.seq_len=12"])  # fmt: skip
    params = jax.jit(transformer.init, static_argnums=0)(cfg.model, jax.random.PRNGKey(0))
    lines = []
    out = inspection.explain(cfg, params, ByteTokenizer(), "ab", GREEDY, 0, tmp_path, 4,
                          print_fn=lines.append, stages=True)  # fmt: skip
    st = out["stages"]
    assert st["sequence"][:3] == [257, 97, 98] and 1 <= len(st["output"]) <= 4
    rows = [ln for ln in lines if re.match(r"\s+\d+ after ", ln)]
    assert len(rows) == len(st["output"])
    assert all(len(re.findall(r" \d\.\d{3}", ln.split(":", 1)[1])) == 5 for ln in rows)  # top 5
    assert np.allclose(np.sum(st["output_probs"], -1), 1)
    assert (tmp_path / "stages_output_probs.png").is_file()
    assert "the embedding table" not in "\n".join(lines)  # 259 rows are not printed


# ---------------------------------------------------------------- the sort study, small


@pytest.fixture(scope="module")
def sort_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sort")
    cfg = config.load(
        SORT_YAML,
        [
            "train.steps=200",
            "train.lr=5e-3",
            "train.warmup_steps=30",
            "train.eval_every=100",
            "train.ckpt_every=100",
            "train.peak_flops=1e11",
            "data.task_train_examples=20000",
            "data.task_val_examples=200",
            "train.eval_windows=64",
        ],
    )
    quiet = lambda *_: None  # noqa: E731
    first = loop.train_run(cfg, tmp / "run", progress=False, stop_after=100, print_fn=quiet)
    assert first["step"] == 100 and first["val_loss"] > 0
    said = []
    loop.train_run(cfg, tmp / "run", progress=False, print_fn=said.append)
    return tmp / "run", said


def test_sort_trains_resumes_samples_and_sorts(sort_run, capsys):
    run_dir, said = sort_run
    assert said[0].startswith("precision: ") and "kept from the run's start" in said[0]
    assert said[1].startswith(f"resuming {run_dir} at step 100/200")
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["step"] for r in recs if "train_loss" in r]
    evals = [r["step"] for r in recs if "val_loss" in r]
    assert train == [50, 100, 150, 200] and evals == [100, 200]  # none lost or doubled
    cfg, params, tok = checkpoint.load_run(run_dir)
    assert checkpoint.manager(run_dir, read_only=True).latest_step() == 200

    held = tasks.inputs(cfg.data, "val", 200)
    ev = task_eval.evaluate(params, cfg, held)
    # an untrained model sorts ~0 of these; 200 steps get nearly all (100% in the full study)
    assert ev.accuracy >= 0.9, (ev.accuracy, ev.failures)
    assert ev.answer_loss < 0.1 and ev.token_accuracy > 0.97

    untrained = jax.jit(transformer.init, static_argnums=0)(cfg.model, jax.random.PRNGKey(0))
    assert task_eval.evaluate(untrained, cfg, held[:64]).accuracy < 0.1

    assert cli.main(["sample", "--run", str(run_dir), "--prompt", "C B A B B C"]
                    + ["--temperature", "0", "--max-new-tokens", "7"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == "C B A B B C A B B B C C"


def test_cli_inspect_stages(sort_run, tmp_path, capsys):
    args = ["inspect", "--run", str(sort_run[0]), "--prompt", "C B A B B C", "--stages"]
    assert cli.main([*args, "--temperature", "0", "--out", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert "== 6. every stage" in said and "A B B B C C </s>" in said
    table = [ln for ln in said.splitlines() if ln.strip().startswith(("6 after", "12 after"))]
    assert len(table) == 2 and table[-1].split()[-1] == "</s>"
    assert (tmp_path / "stages_attention_layer2.png").read_bytes()[:4] == b"\x89PNG"


def test_sort_study_writes_its_result(sort_run, tmp_path):
    import sort

    cfg = config.load(sort_run[0] / "config.yaml")
    # run() on a finished run directory only evaluates and inspects (nothing is retrained)
    out = tmp_path / "study"
    out.mkdir()
    shutil.copytree(sort_run[0], out / "run")
    r = sort.run(cfg, out, print_fn=lambda *_: None, n_eval=300)
    text = sort.report(r, out)
    assert r["held"].total == 300 and r["held"].accuracy >= 0.9
    assert r["distinct"].total == r["n_distinct"] > 100  # every held-out input, once
    assert "| 300 held-out sequences" in text
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    st = r["explained"]["stages"]
    assert st["pieces"][7:] == ["A", "B", "B", "B", "C", "C", "</s>"]
    assert len(st["output_probs"]) == 7 and all(len(p) == 6 for p in st["output_probs"])
    names = {p.name for p in (out / "inspect").glob("stages_*.png")}
    assert {"stages_embeddings.png", "stages_output_probs.png"} <= names
    assert {f"stages_attention_layer{i}.png" for i in range(3)} <= names
    txt = (out / "inspect.txt").read_text()
    for word in ("layernorm", "Q = norm @ wq", "attention per head", "projection", "MLP"):
        assert word in txt
