"""`lm train`: one run directory from one config — data, steps, evals, checkpoints, metrics.

Layout of a run directory:
  config.yaml          the resolved config (a rerun must match it)
  tokenizer.model|json the tokenizer, so the run is self-contained
  metrics.jsonl        one JSON object per line: train lines and eval lines (see README)
  tb/                  TensorBoard events
  checkpoints/<step>/  orbax checkpoints of the whole state

Running the same command on an existing run directory resumes from its latest checkpoint; the
batch at step s is a pure function of (seed, s), so the resumed run reproduces the losses of an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lm import checkpoint, data, flops, runlock, sharding, train
from lm import config as config_lib
from lm.config import Config, ConfigError
from lm.tokenizer import (
    BYTE_FILE,
    SP_FILE,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
)

# Keys that may differ when a run is resumed: they change how it runs, not what is learned.
RESUMABLE_KEYS = {
    "train.log_every",
    "train.eval_every",
    "train.ckpt_every",
    "train.keep_ckpts",
    "train.sample_every",
    "train.sample_tokens",
    "train.peak_flops",
    "data.cache_dir",
    "train.steps_per_call",
    # a checkpoint restores onto any mesh
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
}


class TrainingDiverged(RuntimeError):
    pass


class RunDirError(ValueError):
    """A run directory in a state training must not touch; the message is one line."""


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check_run_dir(cfg: Config, run_dir: Path) -> bool:
    """Check cfg against the run directory's saved config, writing nothing. True when the
    directory holds one (a resume)."""
    saved_path = run_dir / checkpoint.CONFIG_FILE
    if not saved_path.is_file():
        return False
    saved = _flat(config_lib.to_dict(config_lib.load(saved_path)))
    now = _flat(config_lib.to_dict(cfg))
    for k in sorted(set(saved) | set(now)):
        if k not in RESUMABLE_KEYS and saved.get(k) != now.get(k):
            raise ConfigError(
                f"{k}={now.get(k)!r} differs from {saved.get(k)!r} in {saved_path}; "
                "use a new --out directory (or the same config) to resume"
            )
    return True


def prepare_run_dir(cfg: Config, run_dir: Path) -> bool:
    """Write the config, or check it against the saved one. True when resuming.

    Every process checks; only process 0 writes (hosts may share the run directory)."""
    resuming = check_run_dir(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        _write_text_atomic(run_dir / checkpoint.CONFIG_FILE, config_lib.dump(cfg))
    return resuming


def has_tokenizer(run_dir: Path) -> bool:
    return (run_dir / SP_FILE).is_file() or (run_dir / BYTE_FILE).is_file()


def get_tokenizer(cfg: Config, run_dir: Path, save: bool = True) -> Tokenizer:
    """The run directory's tokenizer; when it has none yet, cfg's, built (and with `save`,
    saved there). A damaged tokenizer file is an error, never silently replaced: the weights
    belong to it."""
    if has_tokenizer(run_dir):
        try:
            return load_tokenizer(run_dir)
        except ValueError as e:
            raise RunDirError(str(e)) from None
    try:
        tok = build_tokenizer(cfg.data)
    except ValueError as e:  # no text to train on, a vocabulary the corpus cannot fill, ...
        raise ConfigError(str(e)) from None
    if save and jax.process_index() == 0:
        save_tokenizer(tok, run_dir)
    return tok


def _metric_steps(path: Path) -> list[int]:
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill mid-write
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                steps.append(rec["step"])
    return steps


def check_resumable(cfg: Config, run_dir: Path, start: int, restart: bool) -> None:
    """Refuse to train a run directory from `start` (0, or --init-from's step) when its
    checkpoints are gone but its metrics show it got further: starting over would silently
    replace that history. With `restart`, the old metrics.jsonl is kept under a new name and
    training starts over.

    "Gone" is certain when checkpoints/ is missing (train_run creates it before writing any
    metrics line), or when the metrics pass 2 x train.ckpt_every beyond the start: by then a
    save has finished (each save waits for the one before), so a run killed before its first
    checkpoint is not mistaken for one whose checkpoints were deleted."""
    metrics = run_dir / "metrics.jsonl"
    ckpts = run_dir / checkpoint.CKPT_DIR
    saved = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
    if saved:
        if restart:
            raise RunDirError(
                f"--restart: {ckpts} holds checkpoints (the latest, step {max(saved)}); rerun "
                "without --restart to resume from it, or train in a new --out directory"
            )
        return
    steps = _metric_steps(metrics)
    if restart:
        if metrics.exists() and jax.process_index() == 0:
            dest, k = metrics.with_name(metrics.name + ".before-restart"), 1
            while dest.exists():
                k += 1
                dest = metrics.with_name(f"{metrics.name}.before-restart-{k}")
            metrics.rename(dest)
        return
    if steps and (not ckpts.is_dir() or max(steps) > start + 2 * cfg.train.ckpt_every):
        raise RunDirError(
            f"{run_dir}: metrics.jsonl goes to step {max(steps)} but no checkpoint is left in "
            f"{ckpts} to resume from; rerun with --restart to train again from step {start} "
            "(metrics.jsonl is then kept as metrics.jsonl.before-restart)"
        )


def unigram_entropy(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats/token) on validation of the train split's unigram distribution,
    add-one smoothed: the loss of a model that ignores context, which training must beat."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    val_counts = np.bincount(np.asarray(val_tokens), minlength=vocab)
    return float(-(val_counts * logp).sum() / val_counts.sum())


class MetricsLog:
    """Append-only metrics.jsonl (+ TensorBoard). On resume, lines after the restored step
    are dropped: the resumed run writes them again, identically."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill mid-write
                if rec.get("step", 0) <= resume_step:
                    keep.append(line)
            self.path.write_text("".join(k + "\n" for k in keep))
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1)
        except ImportError:
            self.tb = None

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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


# ---------------------------------------------------------------- compiled programs

# Keys that change no compiled program: the schedule is numbers in the state, the seed an
# argument of the init program, the rest host-side choices; data.* only changes the batches.
# Every other key, a future one included, is part of a program's cache key.
_NOT_COMPILED_IN = {
    "train.seed",
    "train.steps",
    "train.lr",
    "train.schedule",
    "train.warmup_steps",
    "train.decay_fraction",
    "train.min_lr_ratio",
    "train.log_every",
    "train.eval_every",
    "train.eval_windows",
    "train.ckpt_every",
    "train.keep_ckpts",
    "train.peak_flops",
    "train.sample_every",
    "train.sample_tokens",
}


def program_key(cfg: Config) -> str:
    flat = _flat(config_lib.to_dict(cfg))
    keep = {k: v for k, v in flat.items() if k not in _NOT_COMPILED_IN and not k[:5] == "data."}
    return json.dumps(keep, sort_keys=True)


class Programs:
    """A config shape's compiled programs: the initial state from a seed, one call of S train
    steps (any n <= S of them), and the eval of one batch of windows. Every run of that shape
    in this process shares them (a sweep's trunk segments, branches, seeds and cosine runs),
    so each is compiled once; the persistent compilation cache shares them across processes.
    """

    def __init__(self, cfg: Config):
        t0 = time.perf_counter()
        t = cfg.train
        self.mesh = sharding.make_mesh(cfg.mesh)
        self.opt = train.make_optimizer(cfg)
        self.abstract, self.shardings = train.state_specs(cfg, self.opt, self.mesh)
        self.batch_shard = sharding.batch_sharding(self.mesh, 4, 2)
        i32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32)  # noqa: E731
        # The schedule is put in by the run (its own numbers), so it is no constant here.
        unscheduled = lambda d: {k: v for k, v in d.items() if k != "schedule"}  # noqa: E731
        init = jax.jit(
            lambda seed: unscheduled(train.init_state(cfg, self.opt, seed)),
            out_shardings=unscheduled(self.shardings),
        )
        # (Compiling these three on two threads was slower: XLA's compiler uses both cores.)
        self.init = init.lower(i32()).compile()
        S, A = t.steps_per_call, t.grad_accum
        step = train.make_train_step(cfg, self.opt, self.mesh, dynamic=True)
        batches = i32(S, A, t.batch_size // A, t.seq_len + 1)
        self.step = step.lower(self.abstract, batches, i32()).compile()
        self.eval = train.make_eval_step(cfg, self.mesh, batch=t.batch_size)
        self.compile_s = time.perf_counter() - t0


_PROGRAMS: OrderedDict[str, Future] = OrderedDict()
_PROGRAMS_LOCK = threading.Lock()
_PROGRAMS_KEEP = 8  # shapes kept compiled (a sweep trains one size's members in a row)


def programs(cfg: Config) -> Programs:
    """The compiled programs of cfg's shape, compiled on first use (once, also when several
    threads ask at the same time).

    Compiling the next model size on a background thread while a sweep trains the current one
    was tried and measured: on 2 shared cores it slowed the overlapped training by more than
    the compile time it hid (XLA's compiler itself uses several threads), so it is not done."""
    key = program_key(cfg)
    with _PROGRAMS_LOCK:
        fut = _PROGRAMS.get(key)
        mine = fut is None
        if mine:
            fut = _PROGRAMS[key] = Future()
            while len(_PROGRAMS) > _PROGRAMS_KEEP:
                _PROGRAMS.popitem(last=False)
        else:
            _PROGRAMS.move_to_end(key)
    if mine:
        try:
            progs = Programs(cfg)
        except BaseException as e:
            with _PROGRAMS_LOCK:
                if _PROGRAMS.get(key) is fut:
                    del _PROGRAMS[key]  # a later call tries again (and raises itself)
            fut.set_exception(e)
            raise
        fut.set_result(progs)
    return fut.result()


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
    deleted); see `check_resumable`. Returns a summary of the last eval.

    Process 0 holds `run_dir` locked (lm.runlock) from its first write to the end, so a second
    process on the same directory is refused instead of writing every line twice."""
    t_begin = time.perf_counter()
    run_dir = Path(run_dir)
    t_cfg = cfg.train
    is_main = jax.process_index() == 0
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
    dkey = json.dumps([config_lib.to_dict(cfg)["data"], str(tok.identity)], sort_keys=True)

    def cached(key, make):
        if key not in memo:
            try:
                memo[key] = make()
            except ValueError as e:  # the corpus cannot make this run: empty, binary, tiny
                why = str(e)
                if not why.startswith("data.source="):
                    why = f"data.source={cfg.data.source!r}: {why}"
                raise ConfigError(why) from None
        return memo[key]

    tokens = cached(dkey, lambda: data.prepare_data(cfg.data, tok, progress=progress and is_main))
    if len(tokens.train) < t_cfg.seq_len + 1:
        raise ConfigError(
            f"data.source={cfg.data.source!r}: the training split has {len(tokens.train)} "
            f"tokens, fewer than one window of train.seq_len + 1 = {t_cfg.seq_len + 1}; use "
            "more text or a smaller train.seq_len"
        )
    windows = cached(
        (dkey, t_cfg.eval_windows, t_cfg.seq_len),
        lambda: data.val_windows(tokens.val, t_cfg.eval_windows, t_cfg.seq_len),
    )
    uni = cached(
        (dkey, cfg.model.vocab_size),
        lambda: unigram_entropy(tokens.train, tokens.val, cfg.model.vocab_size),
    )
    lock = runlock.hold(run_dir, warn=print_fn) if is_main else contextlib.nullcontext()
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


def _train(
    cfg: Config,
    run_dir: Path,
    tok: Tokenizer,
    tokens: data.TokenData,
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
    t_cfg = cfg.train
    is_main = jax.process_index() == 0
    token_bytes = np.zeros(cfg.model.vocab_size, np.int32)
    token_bytes[: tok.vocab_size] = tok.token_bytes()
    n_train = len(tokens.train)
    total_tokens = t_cfg.steps * t_cfg.batch_size * t_cfg.seq_len
    epochs = total_tokens / max(n_train, 1)

    counts = flops.count_params(cfg.model)
    fpt = flops.flops_per_token(cfg.model, t_cfg.seq_len)
    if t_cfg.peak_flops:
        peak = t_cfg.peak_flops
    else:
        from lm.peak import peak_flops

        peak = peak_flops(cfg.data.cache_dir)
    peak_source = "train.peak_flops" if t_cfg.peak_flops else (
        f"measured once, cached in {Path(cfg.data.cache_dir).expanduser() / 'peak_flops.json'}"
    )  # fmt: skip

    timings = {"setup": 0.0, "compile": 0.0, "train": 0.0, "eval": 0.0, "checkpoint": 0.0}
    t1 = time.perf_counter()
    progs = programs(cfg)  # waits here only when they are compiling
    timings["compile"] += time.perf_counter() - t1
    mesh, abstract, shardings = progs.mesh, progs.abstract, progs.shardings
    mgr = checkpoint.manager(run_dir, keep=t_cfg.keep_ckpts)
    try:
        warn = print_fn if is_main else (lambda *_: None)
        state, latest = checkpoint.restore_latest(
            mgr, abstract, shardings, warn, move_aside=is_main
        )
    except checkpoint.CheckpointError as e:
        mgr.close()
        raise checkpoint.CheckpointError(
            f"{e}; move {run_dir / checkpoint.CKPT_DIR} aside and rerun with --restart to "
            "train from the start"
        ) from None
    saved_step = latest  # the newest checkpoint of this run on disk, for the NaN message
    if latest is not None:
        start = int(latest)
    elif init_from is not None:
        src_dir, src_step = Path(init_from[0]), int(init_from[1])
        src = checkpoint.manager(src_dir, read_only=True)
        try:
            state = checkpoint.restore(src, src_step, abstract, shardings)
        finally:
            src.close()
        start = src_step
        if is_main and (src_dir / "metrics.jsonl").is_file():
            lines = (src_dir / "metrics.jsonl").read_text().splitlines()
            keep = [x for x in lines if x.strip() and json.loads(x).get("step", 0) <= start]
            (run_dir / "metrics.jsonl").write_text("".join(x + "\n" for x in keep))
    else:
        state = progs.init(np.int32(t_cfg.seed))
        start = 0
    # This run's schedule, also after a restore: a branch continues its trunk's state under its
    # own (shorter) schedule; a plain resume writes the same numbers back.
    rep = sharding.replicated(mesh)
    state["schedule"] = jax.device_put(train.schedule_params(t_cfg), rep)
    if is_main:
        print_fn(
            f"{'resuming' if resuming and start else 'training'} {run_dir} at step {start}/"
            f"{t_cfg.steps}: N={counts['non_embedding']:,} non-embedding "
            f"({counts['total']:,} total) params, {total_tokens:,} tokens "
            f"({epochs:.2f} epochs of {n_train:,}), vocab {tok.vocab_size}, "
            f"unigram entropy {uni:.4f} nats/token; MFU against {peak / 1e9:.0f} GFLOP/s "
            f"({peak_source})"
        )
        if epochs > 4:
            print_fn(f"warning: {epochs:.1f} epochs of the training split (over 4 repeats)")
    log = MetricsLog(run_dir, start, enabled=is_main)

    S, A = t_cfg.steps_per_call, t_cfg.grad_accum
    B_micro = t_cfg.batch_size // A
    batch_shard = progs.batch_shard
    pc, pi = jax.process_count(), jax.process_index()

    def host_batches(s0: int, n: int) -> np.ndarray:
        # Always S steps' worth: a shorter call's unused rows are zeros its program skips.
        out = np.zeros((S, A, B_micro // pc, t_cfg.seq_len + 1), np.int32)
        for i, s in enumerate(range(s0, s0 + n)):
            out[i] = data.batch_at(
                tokens.train, t_cfg.seed, s, t_cfg.batch_size, t_cfg.seq_len, pi, pc
            ).reshape(A, B_micro // pc, t_cfg.seq_len + 1)
        return out

    # Calls never straddle a log/eval/checkpoint boundary, so every event lands on its step.
    def call_len(s: int) -> int:
        n = min(S, t_cfg.steps - s)
        for every in (t_cfg.log_every, t_cfg.eval_every, t_cfg.ckpt_every):
            n = min(n, every - s % every)
        if stop_after is not None:
            n = min(n, max(stop_after - s, 1))
        return n

    # Calls are up to S steps, all run by the one compiled program.
    starts, s = [], start
    while s < t_cfg.steps and (stop_after is None or s < stop_after):
        n = call_len(s)
        starts.append((s, n))
        s += n
    lengths = dict(starts)
    prefetch = Prefetcher(lambda s0: host_batches(s0, lengths[s0]), [s0 for s0, _ in starts])

    bar = None
    if progress and is_main:
        from tqdm import tqdm

        bar = tqdm(
            total=t_cfg.steps,
            initial=start,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            position=bar_position,
            leave=bar_position == 0,
        )
    # (first step, steps, device metrics) not yet checked
    warned_mfu: list[bool] = []  # MFU above 100% is reported once per run
    pending: list[tuple[int, int, Any]] = []
    window_t0, window_tokens, last_eval = time.perf_counter(), 0, {}

    def flush(step_now: int) -> dict[str, float] | None:
        """Fetch pending metrics, stop on a non-finite loss, return the latest values."""
        nonlocal window_t0, window_tokens
        if not pending:
            return None
        got = [(s0, jax.tree.map(lambda a, n=n: a[:n], jax.device_get(m))) for s0, n, m in pending]
        pending.clear()
        for s0, m in got:
            # loss[i] is measured with the params before update s0+i+1, param_norm[i] after it,
            # so bad params show a step before their loss would.
            bad = [s0 + int(i) + 1 for i in np.flatnonzero(~np.isfinite(m["loss"]))]
            bad += [s0 + int(i) + 2 for i in np.flatnonzero(~np.isfinite(m["param_norm"]))]
            if bad:
                kept = (
                    f"The last good checkpoint, step {saved_step}, is kept in "
                    f"{run_dir / checkpoint.CKPT_DIR}"
                    if saved_step is not None
                    else "No checkpoint of this run had been written yet"
                )
                raise TrainingDiverged(
                    f"loss became non-finite at step {min(bad)}; stopped. {kept}"
                )
        m = got[-1][1]
        dt = time.perf_counter() - window_t0
        tps = window_tokens / dt if dt > 0 else 0.0
        rec = {
            "step": step_now,
            "tokens": step_now * t_cfg.batch_size * t_cfg.seq_len,
            "train_loss": float(m["loss"][-1]),
            "grad_norm": float(m["grad_norm"][-1]),
            "lr": float(m["lr"][-1]),
            "tokens_per_s": tps,
            "mfu": tps * fpt["hardware"] / peak,
        }
        if rec["mfu"] > 1.0 and not warned_mfu and is_main:
            warned_mfu.append(True)
            print_fn(
                f"warning: MFU {rec['mfu']:.0%} at step {step_now}: the peak ({peak_source}) is "
                "too low, e.g. measured while the machine was busy; set train.peak_flops or "
                "delete the cache file"
            )
        window_t0, window_tokens = time.perf_counter(), 0
        return rec

    def eval_record(s: int) -> dict[str, Any]:
        vl, se, bpb = evaluate(progs.eval, state["params"], windows, token_bytes, t_cfg.batch_size)
        return {
            "step": s,
            "tokens": s * t_cfg.batch_size * t_cfg.seq_len,
            "val_loss": vl,
            "val_loss_se": se,
            "val_bpb": bpb,
        }

    try:
        for s0, n in starts:
            # Each process holds only its rows of the global batch.
            batch = jax.make_array_from_process_local_data(batch_shard, prefetch.get(s0))
            if not timings["setup"]:
                timings["setup"] = time.perf_counter() - t_begin - timings["compile"]
            t0 = time.perf_counter()
            state, m = progs.step(state, batch, np.int32(n))
            pending.append((s0, n, m))
            window_tokens += n * t_cfg.batch_size * t_cfg.seq_len
            s = s0 + n
            is_last = s == t_cfg.steps or (stop_after is not None and s >= stop_after)
            events = s % t_cfg.log_every == 0 or s % t_cfg.eval_every == 0
            events = events or s % t_cfg.ckpt_every == 0 or is_last
            if events:
                jax.block_until_ready(state["step"])
            timings["train"] += time.perf_counter() - t0
            rec = None
            if events:
                rec = flush(s)
                if s % t_cfg.log_every == 0 or is_last:
                    log.write(rec)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{rec['train_loss']:.4f}", tok_s=f"{rec['tokens_per_s']:,.0f}"
                    )
            if s % t_cfg.eval_every == 0 or s == t_cfg.steps:
                t1 = time.perf_counter()
                last_eval = eval_record(s)
                log.write(last_eval)
                timings["eval"] += time.perf_counter() - t1
                window_t0 += time.perf_counter() - t1
                if bar is not None:
                    e = last_eval
                    bar.write(
                        f"step {s}: val_loss {e['val_loss']:.4f} ± {e['val_loss_se']:.4f}, "
                        f"{e['val_bpb']:.4f} bits/byte"
                    )
            if s % t_cfg.ckpt_every == 0 or is_last:
                t1 = time.perf_counter()
                checkpoint.save(mgr, s, state)
                saved_step = s
                timings["checkpoint"] += time.perf_counter() - t1
                window_t0 += time.perf_counter() - t1
            if bar is not None:
                bar.update(n)
        flush(t_cfg.steps)
        if not last_eval and start >= t_cfg.steps:
            # Rerun of a finished run (killed after its last checkpoint, before the caller, a
            # sweep, recorded its result): the final eval again, the same numbers, logged once.
            t1 = time.perf_counter()
            last_eval = eval_record(start)
            timings["eval"] += time.perf_counter() - t1
            logged = [json.loads(x) for x in log.path.read_text().splitlines()] if (
                is_main and log.path.is_file()) else []  # fmt: skip
            if not any(r.get("step") == start and "val_loss" in r for r in logged):
                log.write(last_eval)
    except BaseException:
        # The first error is the one to report: closing after a failed save (a full disk)
        # fails again, and would replace it.
        closers = [lambda: checkpoint.close(mgr), log.close] + ([bar.close] if bar else [])
        for close in closers:
            with contextlib.suppress(Exception):
                close()
        raise
    checkpoint.close(mgr)
    log.close()
    if bar is not None:
        bar.close()

    summary = {
        "run_dir": str(run_dir),
        "params": counts,
        "flops_per_token": fpt,
        "unigram_entropy": uni,
        "timings": timings,
        **{k: v for k, v in last_eval.items() if k.startswith("val")},
        "step": int(jax.device_get(state["step"])),
    }
    if is_main and last_eval:
        print_fn(
            f"step {summary['step']}: val_loss {last_eval['val_loss']:.4f} ± "
            f"{last_eval['val_loss_se']:.4f} nats/token ({last_eval['val_bpb']:.4f} bits/byte) "
            f"vs unigram entropy {uni:.4f}"
        )
    summary["state"] = state
    summary["tokenizer"] = tok
    return summary
