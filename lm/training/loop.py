"""`lm train`: one run directory from one config — data, steps, evals, checkpoints, metrics.

The directory's layout and the checks before anything is written there are lm.training.rundir's;
the compiled programs, shared by every run of one shape, are lm.training.programs'. Running the
same command on an existing run directory resumes from its latest checkpoint; the batch at step
s is a pure function of (seed, s), so the resumed run reproduces the losses of an uninterrupted
one.

A run, in steps: `restore_or_init` gives the train state and its step; `call_schedule` (pure)
cuts the steps left into calls of the one compiled program, each with the events due at its
end; `train_calls` runs them, threading the train state and a host-side `RunState` through
`dispatch`, `flush` (metrics, with the divergence check `first_nonfinite_step`), `run_eval`
and `save_checkpoint`, each of which returns the new state rather than changing a shared one.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from lm import config as config_lib
from lm.config import Config, ConfigError, TrainConfig
from lm.data import dataset
from lm.data.tokenizer import Tokenizer, save_tokenizer
from lm.hardware import peak, precision
from lm.model import flops
from lm.training import checkpoint, sharding, train
from lm.training.programs import Programs, programs
from lm.training.rundir import (
    MetricsLog,
    check_resumable,
    check_run_dir,
    copy_metrics,
    get_tokenizer,
    has_tokenizer,
    prepare_run_dir,
    saved_compute_dtype,
)
from lm.util import dirlock

# ---------------------------------------------------------------- a run


def train_run(
    cfg: Config,
    run_dir: str | Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    init_from: tuple[str | Path, int] | None = None,
    print_fn=print,
    bar_position: int = 0,
    data_memo: dict | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir`. `stop_after` ends early at that step, as a
    kill would (used by tests of resuming). `init_from=(other_run_dir, step)` starts a new run
    from another run's checkpoint (state and step), copying its metrics up to that step: how a
    sweep branches a cooldown off a WSD run's stable phase. `data_memo`: a dict the caller
    keeps across runs over the same corpus (a sweep's members) to hold the mapped tokens,
    validation windows and unigram entropy, which cost ~0.6 s a run to redo. `restart`: train
    from the start although the metrics show the run got further once (its checkpoints were
    deleted); see `check_resumable`. Returns a summary of the last eval, with the final
    state, the tokenizer and the config as run (model.compute_dtype resolved).

    Process 0 holds `run_dir` locked (lm.util.dirlock) from its first write to the end, so a second
    process on the same directory is refused instead of writing every line twice."""
    t_begin = time.perf_counter()
    run_dir = Path(run_dir)
    is_main = jax.process_index() == 0
    kept, kept_from = saved_compute_dtype(run_dir), "the run's start (config.yaml)"
    if kept not in precision.DTYPES and init_from is not None:  # a branch: its source's
        kept, kept_from = saved_compute_dtype(Path(init_from[0])), f"{init_from[0]}"
    cfg, precision_line = precision.resolve(cfg, kept, kept_from)
    if is_main:
        print_fn(precision_line)
    # Every check of the inputs comes before anything is written to run_dir: a mistake leaves
    # no half-made run directory behind to refuse the corrected command.
    check_run_dir(cfg, run_dir)
    tok = get_tokenizer(cfg, run_dir, save=False)
    if cfg.model.vocab_size < tok.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size}: smaller than the tokenizer's "
            f"{tok.vocab_size} tokens"
        )
    memo = {} if data_memo is None else data_memo
    tokens, windows, uni = load_data(cfg, tok, memo, progress=progress and is_main)
    lock = dirlock.hold(run_dir, warn=print_fn) if is_main else contextlib.nullcontext()
    with lock:
        start = init_from[1] if init_from is not None else 0
        check_resumable(cfg, run_dir, int(start), restart)
        resuming = prepare_run_dir(cfg, run_dir)
        if is_main and not has_tokenizer(run_dir):
            save_tokenizer(tok, run_dir)
        return _train(
            cfg, run_dir, tok, tokens, windows, uni, resuming=resuming, t_begin=t_begin,
            progress=progress, stop_after=stop_after, init_from=init_from, print_fn=print_fn,
            bar_position=bar_position,
        )  # fmt: skip


def load_data(
    cfg: Config, tok: Tokenizer, memo: dict, progress: bool
) -> tuple[dataset.TokenData, np.ndarray, float]:
    """The corpus mapped to tokens, the validation windows and the unigram entropy, each kept
    in `memo` for the next run over the same data. A corpus that cannot make this run is a
    ConfigError naming data.source."""
    t = cfg.train
    dkey = json.dumps([config_lib.to_dict(cfg)["data"], str(tok.identity)], sort_keys=True)
    tokens = _memoized(
        memo, dkey, cfg, lambda: dataset.prepare_data(cfg.data, tok, progress=progress)
    )
    if len(tokens.train) < t.seq_len + 1:
        raise ConfigError(
            f"data.source={cfg.data.source!r}: the training split has {len(tokens.train)} "
            f"tokens, fewer than one window of train.seq_len + 1 = {t.seq_len + 1}; use "
            "more text or a smaller train.seq_len"
        )
    windows = _memoized(
        memo, (dkey, t.eval_windows, t.seq_len), cfg,
        lambda: dataset.val_windows(tokens.val, t.eval_windows, t.seq_len),
    )  # fmt: skip
    uni = _memoized(
        memo, (dkey, cfg.model.vocab_size), cfg,
        lambda: unigram_entropy(tokens.train, tokens.val, cfg.model.vocab_size),
    )  # fmt: skip
    return tokens, windows, uni


def _memoized(memo: dict, key: Any, cfg: Config, make) -> Any:
    if key not in memo:
        try:
            memo[key] = make()
        except ValueError as e:  # the corpus cannot make this run: empty, binary, tiny
            why = str(e)
            if not why.startswith("data.source="):
                why = f"data.source={cfg.data.source!r}: {why}"
            raise ConfigError(why) from None
    return memo[key]


def _train(
    cfg: Config,
    run_dir: Path,
    tok: Tokenizer,
    tokens: dataset.TokenData,
    windows: np.ndarray,
    uni: float,
    *,
    resuming: bool,
    t_begin: float,
    progress: bool,
    stop_after: int | None,
    init_from: tuple[str | Path, int] | None,
    print_fn,
    bar_position: int,
) -> dict[str, Any]:
    """train_run's work once its inputs are checked and its directory is held."""
    t = cfg.train
    is_main = jax.process_index() == 0
    warn = print_fn if is_main else (lambda *_: None)
    counts = flops.count_params(cfg.model)
    fpt = flops.flops_per_token(cfg.model, t.seq_len)
    meter = Throughput(t.batch_size * t.seq_len, fpt["hardware"], *peak_of(cfg))
    t1 = time.perf_counter()
    progs = programs(cfg)  # waits here only when they are compiling
    compile_s = time.perf_counter() - t1
    mgr = checkpoint.manager(run_dir, keep=t.keep_ckpts)
    state, start, saved_step = restore_or_init(cfg, run_dir, progs, mgr, init_from, warn=warn)
    for line in run_banner(cfg, run_dir, start, resuming, tok, len(tokens.train), uni, meter):
        warn(line)
    log = MetricsLog(run_dir, start, enabled=is_main)
    calls = call_schedule(
        start, t.steps, t.steps_per_call, t.log_every, t.eval_every, t.ckpt_every, stop_after
    )
    pi, pc = jax.process_index(), jax.process_count()
    batches = Prefetcher(lambda c: host_batches(tokens.train, t, c, pi, pc), calls)
    bar = progress_bar(t.steps, start, bar_position) if progress and is_main else None
    run = RunState.begin(saved_step, compile_s)
    evaluator = Evaluator(progs.eval, windows, token_bytes(tok, cfg.model.vocab_size), t)
    try:
        state, run = train_calls(
            progs, state, run, calls, batches, evaluator=evaluator, meter=meter, mgr=mgr,
            log=log, bar=bar, run_dir=run_dir, warn=warn, t_begin=t_begin,
        )  # fmt: skip
        if not run.last_eval and start >= t.steps:
            run = final_eval_again(evaluator, state, run, start, log)
    except BaseException:
        # The first error is the one to report: closing after a failed save (a full disk)
        # fails again, and would replace it.
        close_all(mgr, log, bar, quiet=True)
        raise
    close_all(mgr, log, bar)
    summary = {
        "run_dir": str(run_dir),
        "params": counts,
        "flops_per_token": fpt,
        "unigram_entropy": uni,
        "timings": run.timings,
        **{k: v for k, v in run.last_eval.items() if k.startswith("val")},
        "step": int(jax.device_get(state["step"])),
    }
    if run.last_eval:
        warn(final_line(summary["step"], run.last_eval, uni))
    return {**summary, "state": state, "tokenizer": tok, "config": cfg}


def train_calls(
    progs: Programs,
    state: dict[str, Any],
    run: RunState,
    calls: list[Call],
    batches: Prefetcher,
    *,
    evaluator: Evaluator,
    meter: Throughput,
    mgr,
    log: MetricsLog,
    bar,
    run_dir: Path,
    warn,
    t_begin: float,
) -> tuple[dict[str, Any], RunState]:
    """Run `calls` in order, each followed by its events: fetch and check the metrics, write
    the train line, evaluate, save a checkpoint. Returns the final train state and run state."""
    for call in calls:
        # Each process holds only its rows of the global batch.
        batch = jax.make_array_from_process_local_data(progs.batch_shard, batches.get(call))
        if not run.timings["setup"]:
            run = run.add_time("setup", time.perf_counter() - t_begin - run.timings["compile"])
        state, run = dispatch(progs.step, state, run, call, batch, meter.tokens_per_step)
        if call.sync:
            run, rec = flush(run, call.end, meter, run_dir)
            run = warn_mfu_once(run, rec, meter, warn)
            if call.log:
                log.write(rec)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{rec['train_loss']:.4f}", tok_s=f"{rec['tokens_per_s']:,.0f}"
                )
        if call.eval:
            run, rec = run_eval(evaluator, state, run, call.end)
            log.write(rec)
            if bar is not None:
                bar.write(
                    f"step {call.end}: val_loss {rec['val_loss']:.4f} ± "
                    f"{rec['val_loss_se']:.4f}, {rec['val_bpb']:.4f} bits/byte"
                )
        if call.ckpt:
            run = save_checkpoint(mgr, state, run, call.end)
        if bar is not None:
            bar.update(call.n)
    return state, run


# ---------------------------------------------------------------- the call schedule


class Call(NamedTuple):
    """One call of the compiled train program: steps start+1 .. start+n, then the events due
    at its last step."""

    start: int  # steps done before the call
    n: int  # steps it runs, 1 to train.steps_per_call
    log: bool  # write a train line
    eval: bool  # evaluate, write an eval line
    ckpt: bool  # save a checkpoint

    @property
    def end(self) -> int:
        return self.start + self.n

    @property
    def sync(self) -> bool:
        """Wait for the call, then fetch and check the metrics of the calls since the last
        sync: before any event."""
        return self.log or self.eval or self.ckpt


def call_schedule(
    start: int,
    steps: int,
    steps_per_call: int,
    log_every: int,
    eval_every: int,
    ckpt_every: int,
    stop_after: int | None = None,
) -> list[Call]:
    """The calls that train from step `start` to `steps`, or to `stop_after` (as a kill
    would end the run). A call runs up to `steps_per_call` steps and never straddles a log,
    eval or checkpoint boundary, so every event lands on its step. Train lines fall on
    multiples of log_every and checkpoints on multiples of ckpt_every, both also at the last
    step (stop_after's too: a resume starts there); evals on multiples of eval_every and at
    `steps`. A pure function of its arguments."""
    end = steps if stop_after is None else min(steps, stop_after)
    calls, s = [], start
    while s < end:
        n = min(steps_per_call, end - s, *(k - s % k for k in (log_every, eval_every, ckpt_every)))
        e = s + n
        calls.append(
            Call(
                s,
                n,
                log=e % log_every == 0 or e == end,
                eval=e % eval_every == 0 or e == steps,
                ckpt=e % ckpt_every == 0 or e == end,
            )
        )
        s = e
    return calls


def host_batches(
    train_tokens: np.ndarray, t: TrainConfig, call: Call, process: int = 0, processes: int = 1
) -> np.ndarray:
    """This process's rows of the batches of `call`'s steps, always S = train.steps_per_call
    steps' worth, shaped (S, grad_accum, rows, seq_len + 1): a shorter call's unused rows are
    zeros its program skips."""
    rows = t.batch_size // t.grad_accum // processes
    out = np.zeros((t.steps_per_call, t.grad_accum, rows, t.seq_len + 1), np.int32)
    for i, s in enumerate(range(call.start, call.end)):
        out[i] = dataset.batch_at(
            train_tokens, t.seed, s, t.batch_size, t.seq_len, process, processes
        ).reshape(t.grad_accum, rows, t.seq_len + 1)
    return out


class Prefetcher:
    """Builds host batches for upcoming calls on a thread, so data never stalls the step."""

    def __init__(self, make, starts: list[int], depth: int = 2):
        self.make, self.starts = make, deque(starts)
        self.results: dict[int, Any] = {}
        self.error: BaseException | None = None
        self.cv = threading.Condition()
        self.depth = depth
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while self.starts:
                with self.cv:
                    while len(self.results) >= self.depth:
                        self.cv.wait()
                s = self.starts.popleft()
                b = self.make(s)
                with self.cv:
                    self.results[s] = b
                    self.cv.notify_all()
        except BaseException as e:  # handed to the consumer, which would otherwise wait forever
            with self.cv:
                self.error = e
                self.cv.notify_all()

    def get(self, s: int):
        with self.cv:
            while s not in self.results:
                if self.error is not None:
                    raise self.error
                self.cv.wait()
            b = self.results.pop(s)
            self.cv.notify_all()
            return b


# ---------------------------------------------------------------- the train state


def restore_or_init(
    cfg: Config,
    run_dir: Path,
    progs: Programs,
    mgr,
    init_from: tuple[str | Path, int] | None,
    warn,
) -> tuple[dict[str, Any], int, int | None]:
    """The train state to start from, its step, and the step of this run's newest checkpoint
    (None while it has none): the run's latest checkpoint that reads; else `init_from`'s
    (whose metrics.jsonl lines up to that step process 0 copies); else a fresh state from
    train.seed. Either way with this run's schedule: a branch continues its trunk's state
    under its own (shorter) schedule; a plain resume writes the same numbers back."""
    is_main, lay = jax.process_index() == 0, progs.layout
    try:
        state, latest = checkpoint.restore_latest(
            mgr, lay.abstract, lay.shardings, warn, move_aside=is_main
        )
    except checkpoint.CheckpointError as e:
        mgr.close()
        raise checkpoint.CheckpointError(
            f"{e}; move {run_dir / checkpoint.CKPT_DIR} aside and rerun with --restart to "
            "train from the start"
        ) from None
    if latest is not None:
        start = int(latest)
    elif init_from is not None:
        src_dir, start = Path(init_from[0]), int(init_from[1])
        src = checkpoint.manager(src_dir, read_only=True)
        try:
            state = checkpoint.restore(src, start, lay.abstract, lay.shardings)
        finally:
            src.close()
        if is_main:
            copy_metrics(src_dir, run_dir, start)
    else:
        state, start = progs.init(np.int32(cfg.train.seed)), 0
    rep = sharding.replicated(lay.mesh)
    state["schedule"] = jax.device_put(train.schedule_params(cfg.train), rep)
    return state, start, latest


# ---------------------------------------------------------------- host-side run state, events


class RunState(NamedTuple):
    """The host's side of a run between calls; the train state (on device) travels beside it.
    Every step below that changes it returns a new one."""

    pending: tuple[tuple[int, int, Any], ...]  # (first step, steps, device metrics) unchecked
    window_t0: float  # start of the throughput window (eval and checkpoint time left out)
    window_tokens: int  # tokens trained in the window
    saved_step: int | None  # this run's newest checkpoint on disk, for the divergence message
    last_eval: dict[str, Any]  # the latest eval line; {} before any
    warned_mfu: bool  # MFU above 100% is reported once per run
    timings: dict[str, float]  # seconds of setup, compile, train, eval, checkpoint

    @staticmethod
    def begin(saved_step: int | None, compile_s: float) -> RunState:
        """The run state before the first call."""
        return RunState(
            pending=(), window_t0=time.perf_counter(), window_tokens=0, saved_step=saved_step,
            last_eval={}, warned_mfu=False,
            timings={"setup": 0.0, "compile": compile_s, "train": 0.0, "eval": 0.0,
                     "checkpoint": 0.0},
        )  # fmt: skip

    def add_time(self, key: str, seconds: float, pause: bool = False) -> RunState:
        """`seconds` added to timings[key]; with `pause`, also left out of the throughput
        window."""
        run = self._replace(timings={**self.timings, key: self.timings[key] + seconds})
        return run._replace(window_t0=run.window_t0 + seconds) if pause else run


class Throughput(NamedTuple):
    """What turns a window's tokens and seconds into tokens/s and MFU."""

    tokens_per_step: int
    flops_per_token: float  # the hardware's FLOPs per token (flops.flops_per_token)
    peak: float  # FLOP/s
    peak_source: str  # where the peak comes from, for messages


class Evaluator(NamedTuple):
    """What the validation loss of some params needs besides them."""

    eval_step: Any  # Programs.eval
    windows: np.ndarray
    token_bytes: np.ndarray
    t: TrainConfig


def dispatch(step_fn, state, run: RunState, call: Call, batch, tokens_per_step: int):
    """Run one call, waiting for it only when it is a sync point; its metrics join the
    pending ones. Returns the new train state and run state."""
    t0 = time.perf_counter()
    state, m = step_fn(state, batch, np.int32(call.n))
    if call.sync:
        jax.block_until_ready(state["step"])
    run = run._replace(
        pending=(*run.pending, (call.start, call.n, m)),
        window_tokens=run.window_tokens + call.n * tokens_per_step,
    )
    return state, run.add_time("train", time.perf_counter() - t0)


def fetch_metrics(pending) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(first step, metrics) of each pending call, on the host, cut to the steps it ran."""
    return [(s0, jax.tree.map(lambda a, n=n: a[:n], jax.device_get(m))) for s0, n, m in pending]


def first_nonfinite_step(got: list[tuple[int, dict[str, np.ndarray]]]) -> int | None:
    """The first step at which training diverged, or None. loss[i] is measured with the params
    before update s0+i+1, param_norm[i] after it, so bad params show a step before their loss
    would."""
    bad = []
    for s0, m in got:
        bad += [s0 + int(i) + 1 for i in np.flatnonzero(~np.isfinite(m["loss"]))]
        bad += [s0 + int(i) + 2 for i in np.flatnonzero(~np.isfinite(m["param_norm"]))]
    return min(bad, default=None)


class TrainingDiverged(RuntimeError):
    pass


def diverged(step: int, run_dir: Path, saved_step: int | None) -> TrainingDiverged:
    kept = (
        f"The last good checkpoint, step {saved_step}, is kept in {run_dir / checkpoint.CKPT_DIR}"
        if saved_step is not None
        else "No checkpoint of this run had been written yet"
    )
    return TrainingDiverged(f"loss became non-finite at step {step}; stopped. {kept}")


def train_record(
    step: int, m: dict[str, np.ndarray], tokens: int, seconds: float, meter: Throughput
) -> dict[str, Any]:
    """The train line at `step`: the last values of its call's metrics `m`, and the throughput
    of `tokens` trained in `seconds`."""
    tps = tokens / seconds if seconds > 0 else 0.0
    return {
        "step": step,
        "tokens": step * meter.tokens_per_step,
        "train_loss": float(m["loss"][-1]),
        "grad_norm": float(m["grad_norm"][-1]),
        "lr": float(m["lr"][-1]),
        "tokens_per_s": tps,
        "mfu": tps * meter.flops_per_token / meter.peak,
    }


def flush(
    run: RunState, step: int, meter: Throughput, run_dir: Path
) -> tuple[RunState, dict[str, Any]]:
    """Fetch the pending metrics (there is one call's at least), stop on a non-finite value,
    and close the throughput window with the train line at `step`."""
    got = fetch_metrics(run.pending)
    bad = first_nonfinite_step(got)
    if bad is not None:
        raise diverged(bad, run_dir, run.saved_step)
    rec = train_record(step, got[-1][1], run.window_tokens, time.perf_counter() - run.window_t0,
                       meter)  # fmt: skip
    return run._replace(pending=(), window_t0=time.perf_counter(), window_tokens=0), rec


def warn_mfu_once(run: RunState, rec: dict[str, Any], meter: Throughput, warn) -> RunState:
    """An MFU above 100% means the peak is wrong: say so, once per run."""
    if rec["mfu"] <= 1.0 or run.warned_mfu:
        return run
    warn(
        f"warning: MFU {rec['mfu']:.0%} at step {rec['step']}: the peak ({meter.peak_source}) "
        "is too low, e.g. measured while the machine was busy; set train.peak_flops or delete "
        "the cache file"
    )
    return run._replace(warned_mfu=True)


def eval_record(ev: Evaluator, params, step: int) -> dict[str, Any]:
    vl, se, bpb = evaluate(ev.eval_step, params, ev.windows, ev.token_bytes, ev.t.batch_size)
    return {
        "step": step,
        "tokens": step * ev.t.batch_size * ev.t.seq_len,
        "val_loss": vl,
        "val_loss_se": se,
        "val_bpb": bpb,
    }


def run_eval(ev: Evaluator, state, run: RunState, step: int) -> tuple[RunState, dict[str, Any]]:
    """Evaluate the state at `step`; the time is left out of the throughput window."""
    t0 = time.perf_counter()
    rec = eval_record(ev, state["params"], step)
    run = run._replace(last_eval=rec).add_time("eval", time.perf_counter() - t0, pause=True)
    return run, rec


def save_checkpoint(mgr, state, run: RunState, step: int) -> RunState:
    """Save the state at `step` (orbax finishes writing in the background); the time is left
    out of the throughput window."""
    t0 = time.perf_counter()
    checkpoint.save(mgr, step, state)
    run = run._replace(saved_step=step)
    return run.add_time("checkpoint", time.perf_counter() - t0, pause=True)


def final_eval_again(ev: Evaluator, state, run: RunState, step: int, log: MetricsLog):
    """A rerun of a finished run (killed after its last checkpoint, before the caller, a
    sweep, recorded its result): the final eval again, the same numbers, logged once."""
    t0 = time.perf_counter()
    rec = eval_record(ev, state["params"], step)
    run = run._replace(last_eval=rec).add_time("eval", time.perf_counter() - t0)
    if not any(r.get("step") == step and "val_loss" in r for r in log.logged()):
        log.write(rec)
    return run


# ---------------------------------------------------------------- evaluation


def evaluate(eval_step, params, windows: np.ndarray, token_bytes: np.ndarray, batch: int):
    """Validation loss (mean nats/token), its standard error over windows, and bits per byte."""
    pending = []
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        pad = batch - len(chunk)
        if pad:  # keep one compiled shape; padded rows are dropped below
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
        # Dispatched without waiting: the next batch is prepared while this one computes.
        pending.append((eval_step(params, chunk, token_bytes), batch - pad))
    losses, nbytes = [], []
    for out, keep in pending:
        l, b = jax.device_get(out)
        losses.append(l[:keep])
        nbytes.append(b[:keep])
    loss_w = np.concatenate(losses).astype(np.float64)  # summed nats per window
    bytes_w = np.concatenate(nbytes).astype(np.float64)
    T = windows.shape[1] - 1
    per_window = loss_w / T
    # Windows are the independent unit (tokens within one are correlated).
    se = per_window.std(ddof=1) / math.sqrt(len(per_window)) if len(per_window) > 1 else 0.0
    bpb = loss_w.sum() / (math.log(2) * max(bytes_w.sum(), 1.0))
    return float(per_window.mean()), float(se), float(bpb)


def evaluate_run(cfg: Config, params, tok: Tokenizer, n_windows: int):
    """`evaluate` on `n_windows` fixed windows of cfg's validation split (`lm eval`)."""
    tokens = dataset.prepare_data(cfg.data, tok, progress=False)
    windows = dataset.val_windows(tokens.val, n_windows, cfg.train.seq_len)
    eval_step = train.make_eval_step(cfg, train.layout(cfg, sharding.make_mesh(cfg.mesh)))
    return evaluate(eval_step, params, windows, token_bytes(tok, cfg.model.vocab_size),
                    cfg.train.batch_size)  # fmt: skip


def token_bytes(tok: Tokenizer, vocab_size: int) -> np.ndarray:
    """Bytes each of the model's vocab_size ids decodes to (0 for rows past the tokenizer's)."""
    out = np.zeros(vocab_size, np.int32)
    out[: tok.vocab_size] = tok.token_bytes()
    return out


def unigram_entropy(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats/token) on validation of the train split's unigram distribution,
    add-one smoothed: the loss of a model that ignores context, which training must beat."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    val_counts = np.bincount(np.asarray(val_tokens), minlength=vocab)
    return float(-(val_counts * logp).sum() / val_counts.sum())


# ---------------------------------------------------------------- reporting


def peak_of(cfg: Config) -> tuple[float, str]:
    """The peak FLOP/s MFU is measured against, and where it comes from."""
    if cfg.train.peak_flops:
        return cfg.train.peak_flops, "train.peak_flops"
    cache = Path(cfg.data.cache_dir).expanduser() / "peak_flops.json"
    prec = peak.precision_of(precision.compute_dtype(cfg.model))  # bf16: the bf16-operand peak
    return peak.peak_flops(cfg.data.cache_dir, precision=prec), (
        f"{prec} matmul peak, measured once, cached in {cache}"
    )


def run_banner(
    cfg: Config,
    run_dir: Path,
    start: int,
    resuming: bool,
    tok: Tokenizer,
    n_train: int,
    uni: float,
    meter: Throughput,
) -> list[str]:
    """What a run prints as it starts."""
    t = cfg.train
    counts = flops.count_params(cfg.model)
    total_tokens = t.steps * t.batch_size * t.seq_len
    epochs = total_tokens / max(n_train, 1)
    lines = [
        f"{'resuming' if resuming and start else 'training'} {run_dir} at step {start}/"
        f"{t.steps}: N={counts['non_embedding']:,} non-embedding "
        f"({counts['total']:,} total) params, {total_tokens:,} tokens "
        f"({epochs:.2f} epochs of {n_train:,}), vocab {tok.vocab_size}, "
        f"unigram entropy {uni:.4f} nats/token; MFU against {meter.peak / 1e9:.0f} GFLOP/s "
        f"({meter.peak_source})"
    ]
    if epochs > 4:
        lines.append(f"warning: {epochs:.1f} epochs of the training split (over 4 repeats)")
    return lines


def final_line(step: int, e: dict[str, Any], uni: float) -> str:
    return (
        f"step {step}: val_loss {e['val_loss']:.4f} ± {e['val_loss_se']:.4f} nats/token "
        f"({e['val_bpb']:.4f} bits/byte) vs unigram entropy {uni:.4f}"
    )


def progress_bar(steps: int, start: int, position: int):
    from tqdm import tqdm

    return tqdm(
        total=steps,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
        position=position,
        leave=position == 0,
    )


def close_all(mgr, log: MetricsLog, bar, quiet: bool = False) -> None:
    """Close the checkpoint manager (waiting for its saves), the metrics log and the bar.
    `quiet` (after an error) suppresses their own errors."""
    for close in [lambda: checkpoint.close(mgr), log.close] + ([bar.close] if bar else []):
        if quiet:
            with contextlib.suppress(Exception):
                close()
        else:
            close()
