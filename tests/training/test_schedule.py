"""The pieces of lm.training.loop's train loop on their own: the call schedule against a naive
step-by-step reference, the batches of a call, metrics flushing and the divergence check."""

import itertools
from pathlib import Path

import chex
import numpy as np
import pytest

from lm import config
from lm.data import dataset
from lm.training import loop
from lm.training.loop import Call, RunState, Throughput, call_schedule


def naive_schedule(start, steps, S, log_every, eval_every, ckpt_every, stop_after=None):
    """One step at a time: a step ends its call when an event falls on it or the call has
    S steps. Train lines and checkpoints at multiples and at the last step (where stop_after
    ends the run too), evals at multiples and at `steps`."""
    calls, first = [], None
    s = start
    while s < steps and (stop_after is None or s < stop_after):
        first = s if first is None else first
        s += 1
        last = s == steps or (stop_after is not None and s >= stop_after)
        log = s % log_every == 0 or last
        ev = s % eval_every == 0 or s == steps
        ckpt = s % ckpt_every == 0 or last
        if log or ev or ckpt or s - first == S:
            calls.append(Call(first, s - first, log=log, eval=ev, ckpt=ckpt))
            first = None
    return calls


def test_call_schedule_matches_the_step_by_step_reference():
    n = 0
    for steps, S, lg, ev, ck in itertools.product(
        [1, 5, 12, 13], [1, 2, 3, 10], [1, 2, 3], [4, 5, 20], [2, 4, 7]
    ):
        for start in sorted({0, 1, steps // 2, steps - 1, steps, steps + 2}):
            for stop_after in [None, 0, start, start + 1, steps // 2 + 1, steps, steps + 5]:
                got = call_schedule(start, steps, S, lg, ev, ck, stop_after)
                assert got == naive_schedule(start, steps, S, lg, ev, ck, stop_after), (
                    start, steps, S, lg, ev, ck, stop_after)  # fmt: skip
                n += 1
                if got:  # contiguous, and the last call is a sync point (nothing left pending)
                    assert got[0].start == start and got[-1].sync
                    assert all(a.end == b.start for a, b in itertools.pairwise(got))
                    assert all(1 <= c.n <= S for c in got)
    assert n > 5000


def test_call_schedule_example():
    # 13 steps in calls of up to 3, lines every 3, evals every 5, checkpoints every 4
    calls = call_schedule(0, 13, 3, 3, 5, 4)
    assert [(c.start, c.n) for c in calls] == [
        (0, 3), (3, 1), (4, 1), (5, 1), (6, 2), (8, 1), (9, 1), (10, 2), (12, 1)
    ]  # fmt: skip
    assert [c.end for c in calls if c.log] == [3, 6, 9, 12, 13]
    assert [c.end for c in calls if c.eval] == [5, 10, 13]
    assert [c.end for c in calls if c.ckpt] == [4, 8, 12, 13]
    # calls with no event are not waited for; their metrics are checked with the next
    quiet = call_schedule(0, 10, 2, 10, 10, 10)
    assert [c.sync for c in quiet] == [False] * 4 + [True]
    # a kill at step 7: the run logs and checkpoints there; a resume from 4 picks up alike
    stopped = call_schedule(0, 13, 3, 3, 5, 4, stop_after=7)
    assert stopped[-1] == Call(6, 1, log=True, eval=False, ckpt=True)
    assert call_schedule(4, 13, 3, 3, 5, 4) == calls[2:]
    assert call_schedule(13, 13, 3, 3, 5, 4) == []


def test_host_batches_are_the_steps_batches_padded_with_zeros():
    cfg = config.load(None, ["train.steps_per_call=4", "train.batch_size=8", "train.grad_accum=2",
                             "train.seq_len=16", "train.seed=3"])  # fmt: skip
    t = cfg.train
    tokens = np.arange(1000, dtype=np.int32) % 251
    out = loop.host_batches(tokens, t, Call(6, 3, log=True, eval=False, ckpt=False))
    chex.assert_shape(out, (4, 2, 4, 17))
    chex.assert_type(out, np.int32)
    for i, s in enumerate(range(6, 9)):
        want = dataset.batch_at(tokens, 3, s, 8, 16).reshape(2, 4, 17)
        np.testing.assert_array_equal(out[i], want)
    assert not out[3].any()
    # process 1 of 2 holds the second half of each micro-batch's rows
    half = loop.host_batches(tokens, t, Call(6, 1, False, False, False), process=1, processes=2)
    want = dataset.batch_at(tokens, 3, 6, 8, 16, 1, 2).reshape(2, 2, 17)
    np.testing.assert_array_equal(half[0], want)


def _run(pending=(), saved_step=None, window_tokens=0):
    run = RunState.begin(saved_step, compile_s=1.5)
    return run._replace(pending=pending, window_tokens=window_tokens)


def _metrics(n, S=4, bad_loss=(), bad_norm=()):
    m = {k: np.full(S, 1.0, np.float32) for k in ("loss", "grad_norm", "lr", "param_norm")}
    m["loss"][:n] = np.arange(1, n + 1)
    for i in bad_loss:
        m["loss"][i] = np.nan
    for i in bad_norm:
        m["param_norm"][i] = np.inf
    m["loss"][n:] = np.nan  # rows past the call's steps are never looked at
    return m


METER = Throughput(tokens_per_step=256, flops_per_token=1e6, peak=1e9, peak_source="test")


def test_flush_writes_the_last_steps_line_and_resets_the_window():
    run = _run(pending=((0, 3, _metrics(3)), (3, 2, _metrics(2))), window_tokens=5 * 256)
    after, rec = loop.flush(run, 5, METER, Path("/r"))
    assert after.pending == () and after.window_tokens == 0
    assert after.window_t0 >= run.window_t0 and after.timings == run.timings
    assert rec["step"] == 5 and rec["tokens"] == 5 * 256 and rec["train_loss"] == 2.0
    assert rec["mfu"] == pytest.approx(rec["tokens_per_s"] * 1e6 / 1e9)
    assert loop.train_record(5, _metrics(2), 100, 0.0, METER)["tokens_per_s"] == 0.0


def test_divergence_is_the_first_bad_step():
    assert loop.first_nonfinite_step([]) is None
    got = [(0, {"loss": np.ones(4), "param_norm": np.ones(4)})]
    assert loop.first_nonfinite_step(got) is None
    bad_loss = [(8, {"loss": np.array([1, np.nan, 1.0]), "param_norm": np.ones(3)})]
    assert loop.first_nonfinite_step(bad_loss) == 10  # loss[1] is measured before update 10
    # params bad after update 9 (param_norm[0]) show at step 10, before their loss (step 11)
    both = [(8, {"loss": np.array([1, 1, np.nan]), "param_norm": np.array([np.inf, 1, 1])})]
    assert loop.first_nonfinite_step(both) == 10
    later = [(0, {"loss": np.ones(2), "param_norm": np.ones(2)}),
             (2, {"loss": np.array([np.nan, 1.0]), "param_norm": np.ones(2)})]  # fmt: skip
    assert loop.first_nonfinite_step(later) == 3


def test_flush_stops_on_a_non_finite_loss_naming_the_kept_checkpoint():
    run = _run(pending=((0, 4, _metrics(4)), (4, 4, _metrics(4, bad_loss=[2]))), saved_step=4)
    with pytest.raises(loop.TrainingDiverged, match="at step 7; stopped. The last good "
                       "checkpoint, step 4, is kept in /r/checkpoints"):  # fmt: skip
        loop.flush(run, 8, METER, Path("/r"))
    with pytest.raises(loop.TrainingDiverged, match="No checkpoint of this run"):
        loop.flush(_run(pending=((0, 2, _metrics(2, bad_norm=[0])),)), 2, METER, Path("/r"))


def test_mfu_warning_once_and_paused_time_leaves_the_window():
    said = []
    run = _run()
    run = loop.warn_mfu_once(run, {"mfu": 0.5, "step": 2}, METER, said.append)
    assert not said and not run.warned_mfu
    for step in (4, 6):
        run = loop.warn_mfu_once(run, {"mfu": 2.0, "step": step}, METER, said.append)
    assert len(said) == 1 and "MFU 200% at step 4" in said[0] and "(test)" in said[0]
    paused = run.add_time("eval", 2.0, pause=True)
    assert paused.timings["eval"] == 2.0 and paused.window_t0 == run.window_t0 + 2.0
    assert run.add_time("train", 1.0).window_t0 == run.window_t0
    assert run.timings == {"setup": 0.0, "compile": 1.5, "train": 0.0, "eval": 0.0,
                           "checkpoint": 0.0}  # fmt: skip
