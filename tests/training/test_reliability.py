"""Nothing lost, nothing hangs, nothing read from outside: each test is a reproducer of a way a
careless or hostile user broke a command, and checks it now ends in one line of error (exit
status 2) or keeps going safely, without losing what was already written."""

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tiny import tiny_cfg

from lm import cli, config
from lm.data.dataset import is_val
from lm.data.tokenizer import ByteTokenizer, train_sentencepiece
from lm.inference import export, numpy_runner
from lm.interop import hf
from lm.model import transformer
from lm.training import checkpoint, loop

ROOT = Path(__file__).resolve().parents[2]
quiet = lambda *_: None  # noqa: E731


@contextlib.contextmanager
def _within(seconds: float):
    """Fail with TimeoutError instead of hanging (SIGALRM interrupts a blocked wait)."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _one_line(err: str, *culprits: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for c in culprits:
        assert c in lines[0], lines[0]
    return lines[0]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cfg(tmp, *extra):
    """The shared tiny run: 8 steps in calls of 2, a checkpoint every 2 (4, 6, 8 kept)."""
    return tiny_cfg(
        tmp, "train.steps=8", "train.ckpt_every=2", "train.log_every=2",
        "train.steps_per_call=2", "train.eval_every=8", *extra,
    )  # fmt: skip


def _train_argv(cfg_file: Path, out: Path, *sets: str) -> list[str]:
    argv = ["train", "--config", str(cfg_file), "--out", str(out), "--sample-tokens", "0"]
    return [*argv, "--no-progress", *(["--set", *sets] if sets else [])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, a finished run directory, its final val_loss, the config as a file)."""
    tmp = tmp_path_factory.mktemp("reliability")
    cfg = _cfg(tmp)
    out = loop.train_run(cfg, tmp / "run", progress=False, print_fn=quiet)
    (tmp / "tiny.yaml").write_text(config.dump(cfg))
    return cfg, tmp / "run", out["val_loss"], tmp / "tiny.yaml"


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------- 1. no silent restart


@pytest.mark.parametrize("how", ["directory", "contents"])
def test_a_run_whose_checkpoints_were_deleted_is_refused_not_restarted(
    trained, tmp_path, capsys, how
):
    _, run_dir, _, _ = trained
    d = _copy(run_dir, tmp_path / "run")
    before = (d / "metrics.jsonl").read_text()
    if how == "directory":
        shutil.rmtree(d / "checkpoints")
    else:
        for p in (d / "checkpoints").iterdir():
            shutil.rmtree(p)
    argv = ["train", "--out", str(d), "--sample-tokens", "0", "--no-progress"]
    assert cli.main(argv) == 2
    _one_line(capsys.readouterr().err, "no checkpoint", "--restart")
    assert (d / "metrics.jsonl").read_text() == before  # nothing truncated

    assert cli.main([*argv, "--restart"]) == 0, capsys.readouterr().err
    assert (d / "metrics.jsonl.before-restart").read_text() == before  # kept, renamed
    assert _metrics(d)[-1]["step"] == 8 and checkpoint.manager(d, read_only=True).all_steps()
    assert cli.main([*argv, "--restart"]) == 2  # checkpoints exist again: resume, not restart
    _one_line(capsys.readouterr().err, "--restart", "holds checkpoints")

    # A run killed before its first save is no such case (a sweep reruns those): its metrics
    # stop within 2 x ckpt_every of the start, and it resumes from the start as before.
    cfg, _, val_loss, _ = trained
    for p in (d / "checkpoints").iterdir():
        shutil.rmtree(p)
    lines = (d / "metrics.jsonl").read_text().splitlines()
    early = [x for x in lines if json.loads(x)["step"] <= 2]
    (d / "metrics.jsonl").write_text("".join(x + "\n" for x in early))
    assert loop.train_run(cfg, d, progress=False, print_fn=quiet)["val_loss"] == val_loss


# ---------------------------------------------------------------- 2, 11. import-hf


@pytest.fixture(scope="module")
def hf_parts():
    """config.json, tokenizer.model and weights of a tiny Llama, made without transformers."""
    m = config.load(
        None,
        ["preset=llama", "model.n_layers=1", "model.d_model=32", "model.n_heads=2",
         "model.vocab_size=416", "model.max_seq_len=32", "train.seq_len=16"],
    ).model  # fmt: skip
    texts = [p.read_text().encode("ascii", "ignore").decode() for p in (ROOT / "lm").glob("*.py")]
    tok = train_sentencepiece(texts, 400, "bpe", num_threads=1)
    tensors = hf.hf_tensors(hf.jax_to_numpy(transformer.init(m, jax.random.PRNGKey(0))), m)
    return hf.hf_config_from_model(m, tok), tok.proto, tensors


def _hf_dir(d: Path, parts, weights: bool = True) -> Path:
    cfg, proto, tensors = parts
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer.model").write_bytes(proto)
    if weights:
        safetensors.numpy.save_file(tensors, str(d / "model.safetensors"))
    return d


def _import(capsys, d: Path, out: Path) -> tuple[int, str]:
    rc = cli.main(["import-hf", str(d), "--out", str(out)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "how", ["passwd", "dotdot", "absolute", "symlinked-shard", "symlinked-weights"]
)
def test_import_hf_reads_no_file_outside_the_model_directory(tmp_path, capsys, hf_parts, how):
    outside = tmp_path / "outside"
    _hf_dir(outside, hf_parts)  # someone else's complete, valid weights
    d = _hf_dir(tmp_path / "hf", hf_parts, weights=False)
    secret = outside / "model.safetensors"
    shard = {
        "passwd": "../../../../../../../../etc/passwd",
        "dotdot": "../outside/model.safetensors",
        "absolute": str(secret),
        "symlinked-shard": "model-00001-of-00001.safetensors",
    }.get(how)
    if how == "symlinked-shard":
        (d / shard).symlink_to(secret)
    if how == "symlinked-weights":
        (d / "model.safetensors").symlink_to(secret)
    else:
        index = {"metadata": {}, "weight_map": {name: shard for name in hf_parts[2]}}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    rc, err = _import(capsys, d, tmp_path / "run")
    assert rc == 2
    _one_line(err, "refused")
    assert not (tmp_path / "run").exists()


def test_import_hf_in_the_hub_cache_follows_only_its_blob_symlinks(tmp_path, capsys, hf_parts):
    """A hub cache snapshot's files are symlinks into its repository's blobs/: those are
    followed; one pointing anywhere else is refused as in any directory."""
    repo = tmp_path / "hub" / "models--org--tiny"
    flat = _hf_dir(tmp_path / "flat", hf_parts)
    snap = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in flat.iterdir():
        shutil.copy(f, repo / "blobs" / f"blob-{f.name}")
        (snap / f.name).symlink_to(Path("../../blobs") / f"blob-{f.name}")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(flat / "model.safetensors")
    rc, err = _import(capsys, snap, tmp_path / "run")
    assert rc == 2
    _one_line(err, "refused")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to("../../blobs/blob-model.safetensors")
    rc, err = _import(capsys, snap, tmp_path / "run")
    assert rc == 0, err
    assert checkpoint.manager(tmp_path / "run", read_only=True).all_steps() == [0]


def _header_list(d: Path, parts):
    (d / "model.safetensors").write_bytes((5).to_bytes(8, "little") + b"[1,2]")


def _int_shards(d: Path, parts):
    index = {"weight_map": {name: 5 for name in parts[2]}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def _no_offsets(d: Path, parts):
    good = safetensors.numpy.save(parts[2])
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + n])
    del header["model.embed_tokens.weight"]["data_offsets"]
    raw = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + good[8 + n :])


def _small_vocab(d: Path, parts):
    """A 200-id model whose 120-id tokenizer fits it: refused for our own limit, and saying so."""
    import sentencepiece as spm

    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | {"vocab_size": 200}))
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["def add(a, b):", "    return a + b", "import numpy as np"] * 50),
        model_writer=out, model_type="bpe", vocab_size=120, num_threads=1, minloglevel=2,
        hard_vocab_limit=False,
    )  # fmt: skip
    (d / "tokenizer.model").write_bytes(out.getvalue())


@pytest.mark.parametrize(
    "damage, culprit",
    [
        (_header_list, "header is not a JSON object"),
        (_int_shards, "file name 5"),
        (_no_offsets, "'model.embed_tokens.weight': malformed shape or data_offsets"),
        (_small_vocab, "config.json: vocab_size=200"),
    ],
)
def test_import_hf_malformed_files_are_one_line(tmp_path, capsys, hf_parts, damage, culprit):
    d = _hf_dir(tmp_path / "hf", hf_parts, weights=False)
    damage(d, hf_parts)
    rc, err = _import(capsys, d, tmp_path / "run")
    assert rc == 2
    _one_line(err, culprit)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 3, 6. data, before compute


def test_a_failing_prefetch_thread_raises_instead_of_hanging():
    def make(s):
        if s == 2:
            raise ValueError("bad batch")
        return s

    p = loop.Prefetcher(make, [0, 1, 2, 3])
    with _within(10):
        assert p.get(0) == 0 and p.get(1) == 1
        with pytest.raises(ValueError, match="bad batch"):
            p.get(2)


def _names(split_val: bool, n: int, fraction: float) -> list[str]:
    """File names whose documents the hash puts in the validation split (or not)."""
    out, i = [], 0
    while len(out) < n:
        name = f"doc{i}.txt"
        if is_val(name, fraction) == split_val:
            out.append(name)
        i += 1
    return out


def _corpus(tmp: Path, kind: str) -> tuple[Path, list[str]]:
    d = tmp / kind
    d.mkdir()
    text = "def f(x):\n    return x * 2\n" * 40
    if kind == "one-tiny-file":
        (d / "tiny.txt").write_text("x = 1\n")
        return d / "tiny.txt", []
    if kind == "all-binary":
        for i in range(3):
            (d / f"b{i}.bin").write_bytes(b"\x00\x01\x02" * 100)
    if kind == "no-validation-split":
        for name in _names(False, 3, 0.05):
            (d / name).write_text(text)
    if kind == "short-training-split":  # long validation text, 4 tokens of training text
        (d / _names(True, 1, 0.5)[0]).write_text(text)
        (d / _names(False, 1, 0.5)[0]).write_text("hi")
        return d, ["data.val_fraction=0.5"]
    return d, []


@pytest.mark.parametrize(
    "kind",
    ["empty-directory", "one-tiny-file", "all-binary", "no-validation-split",
     "short-training-split"],
)  # fmt: skip
def test_a_corpus_that_cannot_make_the_run_is_refused_before_anything_is_written(
    trained, tmp_path, capsys, kind
):
    _, _, _, cfg_file = trained
    source, sets = _corpus(tmp_path, kind)
    out = tmp_path / "run"
    with _within(60):
        rc = cli.main(_train_argv(cfg_file, out, f"data.source={source}", *sets))
    assert rc == 2
    _one_line(capsys.readouterr().err, f"data.source={str(source)!r}")
    assert not out.exists()
    if kind == "empty-directory":  # the corrected command is not refused by leftovers
        assert cli.main(_train_argv(cfg_file, out)) == 0, capsys.readouterr().err


# ---------------------------------------------------------------- 4. corrupt checkpoints


def _flip(step_dir: Path):
    f = max((step_dir / "default" / "ocdbt.process_0" / "d").iterdir(), key=os.path.getsize)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01  # orbax has no checksum: this restores silently wrong
    f.write_bytes(bytes(data))


def _truncate(step_dir: Path):
    f = max((step_dir / "default" / "ocdbt.process_0" / "d").iterdir(), key=os.path.getsize)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _no_metadata(step_dir: Path):
    (step_dir / "default" / "_METADATA").unlink()


def _no_metadata_undigested(step_dir: Path):  # saved by an older version: orbax must fail
    (step_dir / checkpoint.DIGEST_FILE).unlink()
    _no_metadata(step_dir)


@pytest.mark.parametrize("damage", [_flip, _truncate, _no_metadata, _no_metadata_undigested])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_good_one(trained, tmp_path, damage):
    cfg, run_dir, val_loss, _ = trained
    d = _copy(run_dir, tmp_path / "run")
    damage(d / "checkpoints" / "8")
    said: list[str] = []
    out = loop.train_run(cfg, d, progress=False, print_fn=said.append)
    warnings = [s for s in said if s.startswith("warning:")]
    assert len(warnings) == 1 and str(d / "checkpoints" / "8") in warnings[0], said
    assert "using step 6" in warnings[0] and "\n" not in warnings[0]
    assert (d / "checkpoints" / "8.corrupt").is_dir()  # kept for inspection
    assert out["val_loss"] == val_loss  # steps 7-8 trained again, exactly
    assert checkpoint.manager(d, read_only=True).all_steps() == [4, 6, 8]


def test_no_readable_checkpoint_is_one_line_and_renames_nothing(trained, tmp_path, capsys):
    _, run_dir, _, _ = trained
    d = _copy(run_dir, tmp_path / "run")
    for step in (4, 6, 8):
        _no_metadata(d / "checkpoints" / str(step))
    assert cli.main(["train", "--out", str(d), "--sample-tokens", "0", "--no-progress"]) == 2
    _one_line(capsys.readouterr().err, "reads cleanly", "--restart")
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["4", "6", "8"]


# ---------------------------------------------------------------- 5, 12. model files


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    sets = ["preset=llama", "model.n_layers=1", "model.d_model=16", "model.n_heads=2"]
    sets += ["model.max_seq_len=16", "train.seq_len=8", "model.rope_scaling=llama3"]
    cfg = config.load(None, [*sets, "model.rope_original_max_seq_len=8"])
    params = transformer.init(cfg.model, jax.random.PRNGKey(0))
    path = tmp_path_factory.mktemp("model") / "tiny.lm"
    export.save(path, cfg, params, ByteTokenizer())
    return path


def _run_model(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = numpy_runner.main([str(path), "hi", "--max-new-tokens", "2", "--temperature", "0"])
    return rc, err.getvalue()


def test_a_flipped_bit_in_a_model_file_is_one_line(model_file, tmp_path):
    good = model_file.read_bytes()
    n = int.from_bytes(good[:8], "little")
    begin = json.loads(good[8 : 8 + n])["embed"]["data_offsets"][0]
    assert _run_model(model_file)[0] == 0
    weight = bytearray(good)
    weight[8 + n + begin + 40] ^= 0x01  # the lowest mantissa bit of one embedding value
    meta = good.replace(b'\\"norm_eps\\": 1e-05', b'\\"norm_eps\\": 1e-04')  # same length
    assert meta != good
    for i, data in enumerate([bytes(weight), meta]):
        (tmp_path / f"{i}.lm").write_bytes(data)
        rc, err = _run_model(tmp_path / f"{i}.lm")
        assert rc == 2
        _one_line(err, "corrupted")
        with pytest.raises(export.ModelFileError, match="digest"):
            export.load(tmp_path / f"{i}.lm")
    # a file from before the digest (format_version 1) still loads
    meta, tensors = numpy_runner.read_model_file(model_file)
    (tmp_path / "v1.lm").write_bytes(_v1(dict(tensors), meta["config"]))
    assert _run_model(tmp_path / "v1.lm")[0] == 0


def _v1(tensors: dict, cfg_dict: dict) -> bytes:
    """A model file as format_version 1 wrote it: no digest."""
    meta = {"format": "lm-model", "format_version": "1", "kind": "transformer",
            "config": json.dumps(cfg_dict), "tokenizer": "byte"}  # fmt: skip
    return safetensors.numpy.save(tensors, metadata=meta)


def test_a_model_file_whose_vocab_is_smaller_than_its_tokenizer_is_one_line(model_file, tmp_path):
    meta, tensors = numpy_runner.read_model_file(model_file)
    cfg = meta["config"]
    cfg["model"]["vocab_size"] = 200  # the byte tokenizer's BOS is id 257
    cut = {"embed": np.s_[:200], "unembed": np.s_[:, :200]}
    tensors = {k: v[cut[k]] if k in cut else v for k, v in tensors.items()}
    (tmp_path / "small.lm").write_bytes(_v1(tensors, cfg))
    rc, err = _run_model(tmp_path / "small.lm")
    assert rc == 2
    _one_line(err, "tokenizer has 259 ids", "vocab_size is 200")


# ---------------------------------------------------------------- 7. where runs are written


def _mount_tmpfs(where: Path, options: str) -> bool:
    """A small or read-only filesystem, real rather than simulated; needs root's mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "--lazy", str(where)], capture_output=True)  # even if busy


def test_out_that_is_a_file_or_under_one_is_one_line(trained, tmp_path, capsys):
    _, _, _, cfg_file = trained
    (tmp_path / "file").write_text("not a directory")
    for out, culprit in [
        (tmp_path / "file", "is a file"),
        (tmp_path / "file" / "run", f"{tmp_path / 'file'} is a file"),
    ]:
        assert cli.main(_train_argv(cfg_file, out)) == 2
        _one_line(capsys.readouterr().err, culprit)
    assert (tmp_path / "file").read_text() == "not a directory"


def test_out_that_is_not_writable_is_one_line(trained, tmp_path, capsys):
    _, _, _, cfg_file = trained
    ro = tmp_path / "ro"
    mounted = _mount_tmpfs(ro, "ro,size=64k")  # read-only for root too
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions and cannot mount a read-only tmpfs here")
        ro.mkdir()
        ro.chmod(0o500)
    try:
        assert cli.main(_train_argv(cfg_file, ro / "run")) == 2
        _one_line(capsys.readouterr().err, f"{ro} is not writable")
    finally:
        _umount(ro) if mounted else ro.chmod(0o700)


def test_a_full_disk_during_a_save_is_one_line_and_loses_nothing(trained, tmp_path, capsys):
    """On a 1.5 MB filesystem the first checkpoints fit and a later one does not: one line,
    the finished checkpoints and the metrics intact, and after freeing space the same
    command resumes and finishes."""
    _, _, _, cfg_file = trained
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "size=1500k"):
        pytest.skip("needs root's mount to make a small filesystem (a real ENOSPC)")
    argv = _train_argv(cfg_file, small / "run", "train.steps=20", "train.keep_ckpts=20")
    try:
        assert cli.main(argv) == 2
        _one_line(capsys.readouterr().err, "cannot save checkpoint step", "intact")
        steps = checkpoint.manager(small / "run", read_only=True).all_steps()
        assert steps and max(steps) < 20
        last = [r["step"] for r in _metrics(small / "run")][-1]  # every line parses
        assert last >= max(steps)
        checkpoint.load_run(small / "run")
        subprocess.run(["mount", "-o", "remount,size=20m", str(small)], check=True)
        assert cli.main(argv) == 0, capsys.readouterr().err
        assert _metrics(small / "run")[-1]["step"] == 20
    finally:
        _umount(small)


# ---------------------------------------------------------------- 9, 13, 14. the command line


def test_a_lone_surrogate_to_tokenizer_encode_is_one_line(capsys):
    assert cli.main(["tokenizer", "encode", "ab\udcff"]) == 2  # a non-UTF-8 argument byte
    _one_line(capsys.readouterr().err, "lone surrogate")


def test_set_does_not_swallow_the_positional_after_it(capsys):
    argv = ["tokenizer", "encode", "--config", "configs/cpu/tiny.yaml"]
    assert cli.main([*argv, "--set", "data.tokenizer=byte", "train.lr=1e-3", "hi"]) == 0
    assert "ids: 104 105" in capsys.readouterr().out


def test_the_divergence_message_names_the_checkpoint_it_keeps(tmp_path):
    nan = ["train.lr=1e4", "train.warmup_steps=8", "train.clip_norm=0", "train.steps=40"]
    nan += ["train.eval_every=40", "train.log_every=2"]
    with pytest.raises(loop.TrainingDiverged) as e:
        loop.train_run(
            _cfg(tmp_path, *nan, "train.ckpt_every=40"), tmp_path / "a", progress=False,
            print_fn=quiet,
        )  # fmt: skip
    assert "No checkpoint of this run had been written yet" in str(e.value)
    assert "kept" not in str(e.value) and not any((tmp_path / "a" / "checkpoints").iterdir())
    with pytest.raises(loop.TrainingDiverged) as e:
        loop.train_run(_cfg(tmp_path, *nan), tmp_path / "b", progress=False, print_fn=quiet)
    kept = max(checkpoint.manager(tmp_path / "b", read_only=True).all_steps())
    assert f"The last good checkpoint, step {kept}, is kept" in str(e.value)


# ---------------------------------------------------------------- 15. one process per run


def test_a_second_process_on_a_held_run_is_refused_until_the_first_dies(trained, tmp_path):
    """The first `lm train` holds the run; a second is refused in one line; SIGKILL leaves no
    stale lock behind."""
    _, _, _, cfg_file = trained
    d = tmp_path / "run"
    argv = _train_argv(cfg_file, d, "train.steps=100000", "train.ckpt_every=100000",
                       "train.eval_every=100000")  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-c", "import sys; from lm.cli import main; sys.exit(main())", *argv],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while not ((d / "metrics.jsonl").is_file() and _metrics(d)):  # training, so holding
            assert first.poll() is None and time.time() < deadline, "the first run never started"
            time.sleep(0.1)
        held = config.load(d / "config.yaml")
        lines = (d / "metrics.jsonl").read_text()
        with pytest.raises(Exception, match=f"in use by another process \\(pid {first.pid}") as e:
            loop.train_run(held, d, progress=False, stop_after=2, print_fn=quiet)
        assert type(e.value).__name__ == "Busy" and "\n" not in str(e.value)
        assert (d / "metrics.jsonl").read_text().startswith(lines[: lines.rfind("\n")])
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    from lm.util import dirlock

    with _within(5), dirlock.hold(d):  # no stale lock
        pass


# ---------------------------------------------------------------- fuzz: one line or success

_FIELDS = [
    (section, f.name)
    for section, cls in (
        ("model", config.ModelConfig),
        ("data", config.DataConfig),
        ("train", config.TrainConfig),
        ("mesh", config.MeshConfig),
        ("bigram", config.BigramConfig),
    )
    for f in dataclasses.fields(cls)
]
_KEYS = [f"{s}.{k}" for s, k in _FIELDS] + ["kind", "preset", "model", "train"]
_SPECIAL = ["inf", "-inf", ".inf", ".nan", "nan", "1e20", "-1", "0", "1e-300", "none", "true",
            "rope", "llama", "gpt2", "bpe", "byte", "task:sort", "task:add", "stdlib", "~",
            "~no-such-user-x/y", "a\0b", "[1, 2]", "{a: 1}", "!!python/object/apply:os.system",
            "2020-01-01", "'quoted'", "\n", "é", "\ud800"]  # fmt: skip
# no glob characters: a value like "/**" would walk the whole filesystem
_TEXT = st.text(st.characters(blacklist_characters="*?["), max_size=10)
_VALUES = st.one_of(st.sampled_from(_SPECIAL), _TEXT)
_ONE_LINE = dict(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _config_or_one_line(fn):
    with _within(10):
        try:
            fn()
        except config.ConfigError as e:
            assert "\n" not in str(e) and str(e)


@settings(**_ONE_LINE)
@given(
    st.dictionaries(
        st.sampled_from(_FIELDS),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**70), 2**70),
            st.floats(),
            _VALUES,
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),  # fmt: skip
        max_size=6,
    ),
    st.sampled_from(["none", "gpt2", "llama", 3, None]),
)
@example({("data", "source"): "~no-such-user-x/y"}, "none")  # once a RuntimeError
def test_fuzz_config_values(values, preset):
    raw: dict = {"preset": preset}
    for (section, key), v in values.items():
        raw.setdefault(section, {})[key] = v
    _config_or_one_line(lambda: config.from_dict(raw))


_SET = st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(_KEYS), _TEXT), _VALUES)


@settings(**_ONE_LINE)
@given(st.lists(st.one_of(_SET, _TEXT), max_size=4))
@example(["preset=llama", "model=3"])  # once a TypeError
def test_fuzz_set_strings(sets):
    _config_or_one_line(lambda: config.load(None, sets))


def _is_key_value(s: str) -> bool:
    key, eq, _ = s.partition("=")
    return bool(eq) and not s.startswith("-") and not any(c.isspace() for c in key)


@settings(**_ONE_LINE)
@given(st.lists(_SET.filter(_is_key_value), min_size=1, max_size=4))
def test_fuzz_set_strings_through_the_command_line(sets):
    """Exit 0 or 2 with one line, and the positional after --set is never taken. The corpus
    and tokenizer are pinned last, so no case trains a tokenizer or walks a filesystem."""
    argv = ["tokenizer", "encode", "--set", *sets, "data.source=stdlib", "data.tokenizer=byte"]
    out, err = io.StringIO(), io.StringIO()
    with _within(10), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([*argv, "hi"])
    if rc == 0:
        assert "ids: 104 105" in out.getvalue()
    else:
        assert rc == 2
        _one_line(err.getvalue())


def _json():
    leaf = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6)
    )
    nest = lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3)
    return st.recursive(leaf, nest, max_leaves=5)


@settings(**_ONE_LINE)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("tensor"),
                st.sampled_from(["embed", "final_norm.scale", "x"]),
                st.sampled_from(["dtype", "shape", "data_offsets"]),
                _json(),
            ),
            st.tuples(
                st.just("meta"),
                st.sampled_from(
                    ["format", "format_version", "kind", "config", "tokenizer", "sha256"]
                ),
                st.just(""),
                _json(),
            ),
            st.tuples(
                st.just("config"),
                st.sampled_from([k for s, k in _FIELDS if s == "model"]),
                st.just(""),
                _json(),
            ),
            st.tuples(st.just("header"), st.just(""), st.just(""), _json()),
        ),  # fmt: skip
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
)
def test_fuzz_model_file_headers(model_file, tmp_path_factory, edits, as_v1):
    """Any header (kept at version 2 with its digest, or at version 1 without one, to reach
    past the digest into the config) loads and runs, or fails with one line."""
    good = model_file.read_bytes()
    n = int.from_bytes(good[:8], "little")
    header, body = json.loads(good[8 : 8 + n]), good[8 + n :]
    meta = header["__metadata__"]
    cfg = json.loads(meta["config"])
    if as_v1:
        meta["format_version"] = "1"
        del meta["sha256"]
    for what, name, field, value in edits:
        if what == "tensor" and isinstance(header, dict):
            header.setdefault(name, {})
            if isinstance(header[name], dict):
                header[name][field] = value
        elif what == "meta":
            meta[name] = value
        elif what == "config":
            cfg["model"][name] = value
            meta["config"] = json.dumps(cfg)
        else:
            header = value
    raw = json.dumps(header).encode()
    path = tmp_path_factory.getbasetemp() / "fuzz.lm"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + body)
    with _within(10):
        rc, err = _run_model(path)
        assert rc in (0, 2)
        if rc == 2:
            _one_line(err)
        try:
            export.load(path)
        except export.ModelFileError as e:
            assert "\n" not in str(e)
