"""`lm export` / `lm.inference.export.load` / `python -m lm.inference.numpy_runner`: one file
holds the whole model, numpy runs it exactly as JAX does, and no bad file gets further than one
line of error."""

import functools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
import safetensors.numpy
from tiny import tiny_cfg

from lm import cli, config
from lm.data.tokenizer import ByteTokenizer, train_sentencepiece
from lm.inference import export, numpy_runner, sampling
from lm.inference.request import GREEDY, SamplingParams
from lm.model import bigram, transformer
from lm.training import checkpoint, counting, loop

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "def add(a, b):"
# what the `lm` script runs (`python -m lm.cli` would import lm.cli twice, as __main__ too)
LM = "import sys; from lm.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    loop.train_run(tiny_cfg(tmp), tmp / "run", progress=False, print_fn=lambda *_: None)
    return tmp / "run"


def _noisy_params(cfg, seed=0):
    """Random weights with every norm and bias away from its init, so all of them matter, and
    logits spread widely enough that greedy choices are far from ties."""
    return _noisy(cfg.model, jax.random.PRNGKey(seed))


@functools.partial(jax.jit, static_argnums=0)
def _noisy(m, key):
    leaves, treedef = jax.tree.flatten(transformer.init(m, key))
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    noisy = [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


ARCHS = {
    "gpt2": ["preset=gpt2", "model.n_heads=4"],
    "llama-gqa": ["preset=llama", "model.n_heads=4", "model.n_kv_heads=2"],
    # muP at width multiplier 32/8 = 4: logits x 1/4 and attention q.k/H, in numpy as in JAX
    "gpt2-mup": ["preset=gpt2", "model.n_heads=4", "model.parametrization=mup",
                 "model.mup_base_width=8"],
}  # fmt: skip


@pytest.fixture(scope="module")
def sp_tok():
    texts = [p.read_text().encode("ascii", "ignore").decode() for p in (ROOT / "lm").glob("*.py")]
    return train_sentencepiece(texts, 400, "bpe", num_threads=1)


def _arch(name, sp_tok):
    common = ["model.n_layers=2", "model.d_model=32", "model.max_seq_len=64"]
    common += ["model.init_std=0.2", "train.seq_len=32"]
    if name == "llama-gqa":  # with a sentencepiece tokenizer, and spare embedding rows
        extra = ["data.tokenizer=bpe", "data.tokenizer_vocab=400", "model.vocab_size=416"]
        return config.load(None, [*ARCHS[name], *common, *extra]), sp_tok
    return config.load(None, [*ARCHS[name], *common]), ByteTokenizer()


@pytest.fixture(scope="module")
def byte_file(tmp_path_factory):
    cfg, tok = _arch("gpt2", None)
    path = tmp_path_factory.mktemp("files") / "gpt2.lm"
    export.save(path, cfg, _noisy_params(cfg), tok)
    return path


def _runner(*args, importtime=False):
    flags = ["-X", "importtime"] if importtime else []
    r = subprocess.run(
        [sys.executable, *flags, "-m", "lm.inference.numpy_runner", *map(str, args)],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    # decoded by hand: text=True would also turn a generated "\r" into "\n"
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    return r


# ---------------------------------------------------------------- round trips


def test_export_of_a_run_loads_to_the_same_logits(trained, tmp_path, capsys):
    assert cli.main(["export", "--run", str(trained), "--out", str(tmp_path / "m.lm")]) == 0
    said = capsys.readouterr().out
    assert "parameters" in said and "python -m lm.inference.numpy_runner" in said
    cfg, params, tok = export.load(tmp_path / "m.lm")
    cfg0, params0, tok0 = checkpoint.load_run(trained)
    assert cfg == cfg0 and tok == tok0
    tokens = np.asarray([[tok.bos_id, *tok.encode(PROMPT)]])
    np.testing.assert_array_equal(
        transformer.apply(params, tokens, cfg.model), transformer.apply(params0, tokens, cfg.model)
    )
    # the file is plain safetensors: the reference reader agrees with ours
    meta, ours = numpy_runner.read_model_file(tmp_path / "m.lm")
    theirs = safetensors.numpy.load_file(tmp_path / "m.lm")
    chex.assert_trees_all_equal(theirs, ours, strict=True)  # names, shapes, dtypes, values
    assert meta["format"] == "lm-model" and meta["config"] == config.to_dict(cfg)


@pytest.mark.parametrize("arch", ARCHS)
def test_numpy_runner_matches_jax(arch, sp_tok, tmp_path):
    cfg, tok = _arch(arch, sp_tok)
    params = _noisy_params(cfg)
    path = export.save(tmp_path / "m.lm", cfg, params, tok)
    meta, w = numpy_runner.read_model_file(path)
    m = meta["config"]["model"]
    assert meta["format_version"] == ("3" if cfg.model.parametrization == "mup" else "2")
    specs = jax.tree_util.tree_flatten_with_path(
        transformer.param_specs(cfg.model), is_leaf=transformer.is_spec
    )
    names = {".".join(k.key for k in p): s.shape for p, s in specs[0]}
    assert numpy_runner.param_shapes("transformer", m) == names

    # logits at every position, fed one token at a time through the KV cache
    prompt = [tok.bos_id, *tok.encode(PROMPT)]
    full = np.asarray(transformer.apply(params, np.asarray([prompt]), cfg.model))[0]
    step = numpy_runner.transformer(w, m)
    got = [step(prompt[:3])] + [step([t]) for t in prompt[3:]]
    np.testing.assert_allclose(np.stack(got), full[2:], rtol=1e-4, atol=1e-4)

    # greedy decoding, token for token
    n = cfg.model.max_seq_len - len(prompt)
    ours = list(numpy_runner.generate(numpy_runner.transformer(w, m), prompt, n, GREEDY))
    jax_ids = sampling.generate(params, cfg.model, [prompt], jax.random.PRNGKey(0), n, GREEDY)[0]
    assert ours == jax_ids and len(ours) == n

    # and the CLI prints the prompt and then exactly their text, importing no jax
    r = _runner(path, PROMPT, "--temperature", "0", "--max-new-tokens", n, importtime=True)
    assert r.returncode == 0, r.stderr
    expected = PROMPT + tok.decode([i for i in ours if i < tok.vocab_size])
    assert r.stdout == expected + "\n"
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "numpy" in imported and not {x for x in imported if x.split(".")[0] == "jax"}


def test_sampling_is_seeded_and_top_k_restricts(byte_file):
    meta, w = numpy_runner.read_model_file(byte_file)
    step = lambda: numpy_runner.transformer(w, meta["config"]["model"])
    t1 = SamplingParams(temperature=1.0)
    a = list(numpy_runner.generate(step(), [257], 20, t1, seed=3))
    assert a == list(numpy_runner.generate(step(), [257], 20, t1, seed=3))
    assert a != list(numpy_runner.generate(step(), [257], 20, t1, seed=4))
    greedy = list(numpy_runner.generate(step(), [257], 20, GREEDY))
    top1 = SamplingParams(temperature=5.0, top_k=1)
    assert list(numpy_runner.generate(step(), [257], 20, top1, seed=1)) == greedy


def test_bigram_run_exports_and_runs(tmp_path):
    cfg = tiny_cfg(tmp_path, "kind=bigram")
    counting.train_run(cfg, tmp_path / "bg", print_fn=lambda *_: None)
    path = export.export(tmp_path / "bg", tmp_path / "bg.lm")
    cfg2, params, tok = export.load(path)
    table = bigram.load(tmp_path / "bg")
    assert cfg2.kind == "bigram" and tok == ByteTokenizer()
    np.testing.assert_array_equal(np.asarray(params["bigram"]), table)
    prompt = [tok.bos_id, *tok.encode("import ")]
    ours = list(
        numpy_runner.generate(numpy_runner.bigram({"bigram": table}), prompt, 30, eos_id=tok.eos_id)
    )
    key = jax.random.PRNGKey(0)
    want = sampling.generate_bigram(table, prompt, key, 30, GREEDY, eos_id=tok.eos_id)
    assert ours == want
    r = _runner(path, "import ", "--max-new-tokens", "30", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.startswith("import "), r.stderr


def test_stream_text_holds_back_split_characters():
    tok = ByteTokenizer()
    text = "añ€😀b"
    chunks = [[b] for b in text.encode()]  # one byte at a time: characters split everywhere
    pieces = list(numpy_runner.stream_text(tok.decode, chunks))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    bad = [[0xE2], [0x28], [0x41]]  # an invalid sequence still comes out, as U+FFFD
    assert "".join(numpy_runner.stream_text(tok.decode, bad)) == bytes([0xE2, 0x28, 0x41]).decode(
        errors="replace"
    )


# ---------------------------------------------------------------- bad files


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker directory
        return (os.mkdir, (self.marker,))


def _header(meta, entries):
    head = json.dumps({"__metadata__": meta, **entries}).encode()
    return len(head).to_bytes(8, "little") + head


def _bad_files(good: bytes, tmp: Path) -> dict[str, bytes]:
    n = int.from_bytes(good[:8], "little")
    meta = json.loads(good[8 : 8 + n])["__metadata__"]
    shape_error = safetensors.numpy.save({"embed": np.zeros((3, 3), np.float32)}, metadata=meta)
    corrupt = bytearray(good)
    corrupt[8 + n // 2 : 8 + n // 2 + 4] = b"\xff\x00{["
    rng = np.random.default_rng(0)
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "truncated-header": good[:40],
        "corrupted-header": bytes(corrupt),
        "png": b"\x89PNG\r\n\x1a\n" + rng.bytes(200),
        "pickle": pickle.dumps(_Evil(str(tmp / "pwned"))),
        "random": rng.bytes(4096),
        "foreign-safetensors": safetensors.numpy.save({"w": np.zeros(4, np.float32)}),
        "huge-header-length": (2**62).to_bytes(8, "little") + b"{}",
        "huge-tensor": _header(
            meta, {"embed": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 2**82]}}
        ),
        "wrong-shapes": shape_error,
        "future-version": _header({**meta, "format_version": "99"}, {}),
        "bad-config": _header({**meta, "config": "{not json"}, {}),
        "deep-json": (20001).to_bytes(8, "little") + b"[" * 20000 + b"0",
    }


@pytest.fixture(scope="module")
def bad_files(byte_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    paths = {}
    for name, data in _bad_files(byte_file.read_bytes(), tmp).items():
        paths[name] = tmp / f"{name}.lm"
        paths[name].write_bytes(data)
    paths["missing"] = tmp / "no-such-file.lm"
    return paths


def _one_line_error(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize(
    "name",
    [
        "empty",
        "truncated",
        "truncated-header",
        "corrupted-header",
        "png",
        "pickle",
        "random",
        "foreign-safetensors",
        "huge-header-length",
        "huge-tensor",
        "wrong-shapes",
        "future-version",
        "bad-config",
        "deep-json",
        "missing",
    ],
)
def test_bad_files_fail_with_one_line(bad_files, name):
    path = bad_files[name]
    r = _runner(path, "hi")
    _one_line_error(r)
    assert str(path) in r.stderr
    with pytest.raises(export.ModelFileError):
        export.load(path)
    assert not (path.parent / "pwned").exists()


def test_bad_files_through_lm_sample(bad_files, capsys):
    r = subprocess.run(
        [sys.executable, "-c", LM, "sample", "--run", str(bad_files["pickle"])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    _one_line_error(r)
    for name in ("truncated", "foreign-safetensors", "huge-tensor"):  # the same, in process
        assert cli.main(["sample", "--run", str(bad_files[name])]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad_files[name]) in err[0]
    assert not (bad_files["pickle"].parent / "pwned").exists()


def test_random_corruption_never_escapes_as_another_error(byte_file):
    good = byte_file.read_bytes()
    n = int.from_bytes(good[:8], "little")
    digits = [i for i in range(8, 8 + n) if chr(good[i]).isdigit()]
    rng = np.random.default_rng(1)
    tmp = byte_file.parent / "fuzz.lm"
    loaded = 0
    for trial in range(300):
        data = bytearray(good)
        if trial % 3 == 0:  # truncate, then flip a byte
            data = data[: rng.integers(0, len(good))]
            if data:
                data[rng.integers(0, min(len(data), n + 8))] = int(rng.integers(0, 256))
        else:  # change digits: the JSON stays valid, sizes, offsets and config values change
            for i in rng.choice(digits, size=int(rng.integers(1, 3))):
                data[i] = ord(str(rng.integers(0, 10)))
        tmp.write_bytes(bytes(data))
        try:
            meta, w = numpy_runner.read_model_file(tmp)
        except numpy_runner.ModelFileError:
            continue
        loaded += 1  # what loads has the shapes its config promises: the forward pass runs
        logits = numpy_runner.transformer(w, meta["config"]["model"], 3)([1, 2, 3])
        assert logits.shape == (meta["config"]["model"]["vocab_size"],)
    assert 0 < loaded < 300


def test_runner_rejects_bad_requests(byte_file):
    for args in (
        ["--temperature", "-1"],
        ["--top-k", "0"],
        ["--max-new-tokens", "0"],
        ["--max-new-tokens", "1000"],
    ):
        _one_line_error(_runner(byte_file, "hi", *args))
    _one_line_error(_runner(byte_file, "x" * 80))  # longer than max_seq_len 64


def test_runner_top_p_and_min_p_match_the_jax_filters():
    """The numpy runner's filters keep exactly the tokens lm.inference.sampling's keep."""
    logits = np.random.default_rng(0).normal(size=(64,)).astype(np.float32) * 3
    sizes = set()
    for top_k, top_p, min_p in ((None, 0.5, None), (None, None, 0.2), (9, 0.9, 0.05),
                                (None, 1.0, 0.0)):  # fmt: skip
        z = sampling.process_logits(logits[None], 0.7, top_k, top_p, min_p)
        want = np.isfinite(np.asarray(z[0]))
        sp = SamplingParams(0.7, top_k, top_p, min_p)
        got = np.isfinite(numpy_runner.filtered(logits, sp))
        np.testing.assert_array_equal(got, want, err_msg=str((top_k, top_p, min_p)))
        sizes.add(int(want.sum()))
    assert len(sizes) == 4 and 64 in sizes  # four different cuts, one keeping everything
    rng = np.random.default_rng(1)
    nucleus = SamplingParams(1.0, top_p=0.5)
    kept = np.flatnonzero(np.isfinite(numpy_runner.filtered(logits, nucleus)))
    assert {numpy_runner.sample(logits, nucleus, rng) for _ in range(200)} <= set(kept.tolist())


def test_runner_cli_takes_top_p_and_min_p(byte_file):
    for extra, ok in ((["--top-p", "0.5", "--min-p", "0.1"], True), (["--top-p", "0"], False)):
        r = subprocess.run(
            [sys.executable, "-m", "lm.inference.numpy_runner", str(byte_file), "a",
             "--max-new-tokens", "3", *extra],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert (r.returncode == 0) == ok, r.stderr
        assert ok or r.stderr.strip().splitlines() == ["error: --top-p 0.0: must be in (0, 1]"]


def test_export_hf_of_a_byte_run_writes_a_working_tokenizer(trained, tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs the convert extra")
    assert cli.main(["export-hf", "--run", str(trained), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = 'def f():\n    return "こんにちは 世界" 😀'
    ids = fast(text)["input_ids"]
    tok = ByteTokenizer()
    assert ids == [tok.bos_id, *tok.encode(text)]
    assert fast.decode(ids, skip_special_tokens=True) == text
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (257, 258, 256)
