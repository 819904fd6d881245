"""End to end: `lm train` writes a run directory, resumes after a kill, stops on NaN."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from tiny import tiny_cfg

from lm import config
from lm.config import ConfigError
from lm.hardware import precision
from lm.training import checkpoint, loop, train
from lm.training.programs import programs

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, *extra):
    """The shared tiny run, longer: 12 steps in calls of 2, so resumes land mid-run."""
    return tiny_cfg(
        tmp_path,
        "train.steps=12", "train.warmup_steps=2", "train.log_every=2", "train.eval_every=4",
        "train.eval_windows=8", "train.ckpt_every=4", "train.steps_per_call=2", *extra,
    )  # fmt: skip


def _lines(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_contract_and_resume_equality(tmp_path):
    cfg = _cfg(tmp_path)
    straight = loop.train_run(cfg, tmp_path / "a", progress=False, print_fn=lambda *_: None)
    # "kill" after step 6 (checkpoint at 4), then rerun the same thing
    loop.train_run(cfg, tmp_path / "b", progress=False, stop_after=6, print_fn=lambda *_: None)
    resumed = loop.train_run(cfg, tmp_path / "b", progress=False, print_fn=lambda *_: None)

    a, b = _lines(tmp_path / "a"), _lines(tmp_path / "b")
    strip = lambda rs: [
        {k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rs
    ]
    assert strip(a) == strip(b)  # bitwise-equal losses, no duplicated or missing lines
    assert straight["val_loss"] == resumed["val_loss"]

    train_lines = [r for r in a if "train_loss" in r]
    eval_lines = [r for r in a if "val_loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in eval_lines] == [4, 8, 12]
    for r in a:
        assert r["tokens"] == r["step"] * 8 * 32
    for r in eval_lines:
        assert r["val_loss_se"] > 0 and r["val_bpb"] > 0
        # byte tokens: bits per byte is the loss in bits (EOS carries no bytes, so a bit more)
        assert r["val_bpb"] >= r["val_loss"] / math.log(2) * 0.99
    run = tmp_path / "a"
    assert (run / "config.yaml").is_file() and (run / "tokenizer.json").is_file()
    assert any((run / "tb").iterdir())
    assert config.load(run / "config.yaml") == precision.resolve(cfg)[0]  # "auto" as run
    assert checkpoint.manager(run, read_only=True).all_steps() == [4, 8, 12]


def test_short_calls_reuse_the_one_program_and_match_single_steps(tmp_path):
    """Calls cut short by a log/eval/checkpoint boundary run in the S-step program with the
    rest of their batches skipped: the same numbers as single-step calls."""
    quiet = lambda *_: None  # noqa: E731
    padded = _cfg(tmp_path, "train.steps_per_call=3", "train.steps=7")  # calls of 2, 2, 2, 1
    single = _cfg(tmp_path, "train.steps_per_call=1", "train.steps=7")
    a = loop.train_run(padded, tmp_path / "a", progress=False, print_fn=quiet)
    b = loop.train_run(single, tmp_path / "b", progress=False, print_fn=quiet)
    strip = lambda rs: [
        {k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rs
    ]
    assert strip(_lines(tmp_path / "a")) == strip(_lines(tmp_path / "b"))
    assert a["val_loss"] == b["val_loss"] and a["step"] == 7


def test_rerun_of_a_finished_run_reports_its_final_eval(tmp_path):
    """Killed after its last checkpoint but before a sweep recorded it, a run is rerun with
    nothing left to train: it still reports its final eval, and logs nothing twice."""
    quiet = lambda *_: None  # noqa: E731
    cfg = _cfg(tmp_path)
    first = loop.train_run(cfg, tmp_path / "f", progress=False, print_fn=quiet)
    before = _lines(tmp_path / "f")
    again = loop.train_run(cfg, tmp_path / "f", progress=False, print_fn=quiet)
    assert (again["val_loss"], again["val_bpb"]) == (first["val_loss"], first["val_bpb"])
    assert _lines(tmp_path / "f") == before


def test_runs_of_one_shape_share_compiled_programs(tmp_path):
    """Length, rate, schedule and seed are not compiled in: a sweep's members of one size
    compile their init, train and eval programs once. The seed-argument init is the state
    train.create_state builds with the seed compiled in, bit for bit."""
    cfg = _cfg(tmp_path)
    other = _cfg(tmp_path, "train.seed=3", "train.lr=1e-3", "train.steps=6", "train.schedule=wsd",
                 "train.warmup_steps=1", "train.eval_windows=4", "data.max_docs=200")  # fmt: skip
    assert programs(cfg) is programs(other)
    assert programs(_cfg(tmp_path, "model.d_model=64")) is not programs(cfg)
    progs = programs(other)
    got = progs.init(np.int32(3))
    want = train.create_state(other, progs.layout)
    assert set(want) - set(got) == {"schedule"}
    chex.assert_trees_all_equal(got, {k: want[k] for k in got})


def test_restore_or_init_takes_the_checkpoint_else_init_from_else_a_fresh_state(tmp_path):
    quiet = lambda *_: None  # noqa: E731
    cfg = _cfg(tmp_path)
    loop.train_run(cfg, tmp_path / "a", progress=False, stop_after=6, print_fn=quiet)
    progs = programs(cfg)

    def restore(run_dir, init_from=None):
        run_dir.mkdir(exist_ok=True)
        mgr = checkpoint.manager(run_dir)
        try:
            state, start, saved = loop.restore_or_init(cfg, run_dir, progs, mgr, init_from, quiet)
        finally:
            mgr.close()
        assert "schedule" in state
        return int(state["step"]), start, saved

    assert restore(tmp_path / "a") == (6, 6, 6)  # stopped at 6: its last checkpoint
    assert restore(tmp_path / "b", init_from=(tmp_path / "a", 4)) == (4, 4, None)
    assert [r["step"] for r in _lines(tmp_path / "b")] == [2, 4, 4]  # a's lines to step 4
    assert restore(tmp_path / "c") == (0, 0, None)


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = _cfg(tmp_path)
    loop.train_run(cfg, tmp_path / "r", progress=False, stop_after=4, print_fn=lambda *_: None)
    changed = _cfg(tmp_path, "train.lr=1e-2")
    with pytest.raises(ConfigError, match="train.lr"):
        loop.train_run(changed, tmp_path / "r", progress=False)
    # logging intervals may change
    ok = _cfg(tmp_path, "train.log_every=4")
    loop.train_run(ok, tmp_path / "r", progress=False, print_fn=lambda *_: None)


def test_nan_stops_with_the_step_and_keeps_good_checkpoints(tmp_path):
    cfg = _cfg(
        tmp_path,
        "train.lr=1e4",
        "train.warmup_steps=8",
        "train.clip_norm=0",
        "train.steps=40",
        "train.ckpt_every=2",
        "train.eval_every=40",
    )
    with pytest.raises(loop.TrainingDiverged, match=r"at step (\d+)") as e:
        loop.train_run(cfg, tmp_path / "n", progress=False, print_fn=lambda *_: None)
    bad_step = int(str(e.value).split("at step ")[1].split(";")[0])
    mgr = checkpoint.manager(tmp_path / "n", read_only=True)
    steps = mgr.all_steps()
    assert steps and max(steps) < bad_step
    _, params, _ = checkpoint.load_run(tmp_path / "n")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def _cli(*args, timeout=300, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        **kw,
    )


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--set", "model.d_model=100", "model.n_heads=3"], "model.d_model=100"),
        (["--set", "train.lr=0"], "train.lr=0.0"),
        (["--set", "data.source=/nope"], "data.source='/nope'"),
        (["--set", "model.colour=red"], "model.colour"),
        (["--config", "/no/such.yaml"], "/no/such.yaml"),
    ],
)
def test_cli_config_errors_are_one_line(tmp_path, args, culprit):
    out = tmp_path / "run"
    r = _cli(
        "train",
        "--out",
        str(out),
        *(["--config", "configs/cpu/tiny.yaml"] if args[0] == "--set" else []),
        *args,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], r.stderr
    assert not out.exists()  # nothing written before the error


def test_cli_sigkill_then_rerun_resumes_to_the_same_loss(tmp_path):
    """The acceptance scenario: SIGKILL midway, rerun the same command, same final loss as the
    same config trained straight through (here, in this process: one `lm` start fewer)."""
    sets = [
        "model.n_layers=2",
        "model.d_model=32",
        "model.n_heads=2",
        "model.max_seq_len=32",
        "data.max_docs=300",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.seq_len=32",
        "train.batch_size=8",
        "train.steps=60",
        "train.log_every=10",
        "train.eval_every=30",
        "train.eval_windows=8",
        "train.ckpt_every=10",
        "train.steps_per_call=1",
        "train.peak_flops=1e11",
    ]
    straight = config.load(ROOT / "configs/cpu/tiny.yaml", sets)
    loop.train_run(straight, tmp_path / "a", progress=False, print_fn=lambda *_: None)

    base = ["train", "--config", "configs/cpu/tiny.yaml", "--sample-tokens", "0", "--no-progress"]
    run = tmp_path / "b"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "lm.cli", *base, "--out", str(run), "--set", *sets],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:  # kill once a checkpoint exists
        if (run / "checkpoints" / "20").is_dir():
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = max(r["step"] for r in _lines(run)) if (run / "metrics.jsonl").exists() else 0
    assert killed_at < 60, "the run finished before it could be killed"
    again = _cli(*base, "--out", str(run), "--set", *sets)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout

    last = lambda rd: [r for r in _lines(rd) if "val_loss" in r][-1]
    assert last(tmp_path / "a")["val_loss"] == last(run)["val_loss"]
    assert [r["step"] for r in _lines(run)] == [r["step"] for r in _lines(tmp_path / "a")]


def test_an_impossible_mfu_warns_once_and_the_best_peak_is_kept(tmp_path):
    """A peak measured under load makes MFU exceed 100%: the run says so (once), and
    record_peak only ever raises the cached figure."""
    from lm.hardware import peak

    lines: list[str] = []
    cfg = tiny_cfg(tmp_path, "train.peak_flops=1e3", "train.steps=8", "train.log_every=4")
    out = loop.train_run(cfg, tmp_path / "run", progress=False, print_fn=lines.append)
    warnings = [x for x in lines if x.startswith("warning: MFU")]
    assert len(warnings) == 1 and "train.peak_flops" in warnings[0], lines
    assert all(r["mfu"] > 1 for r in _lines(tmp_path / "run") if "mfu" in r) and out["step"] == 8

    cache = tmp_path / "peak"
    assert peak.record_peak(5e10, cache) == 5e10
    assert peak.record_peak(2e10, cache) == 5e10  # a busier measurement never lowers it
    assert peak.record_peak(9e10, cache) == 9e10
    assert peak.peak_flops(cache) == 9e10  # and runs use it, with no new measurement
