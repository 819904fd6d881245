"""Train-step throughput on CPU, lm against PyTorch eager, in float32 and bfloat16.

    python benchmarks/bench_train.py [--sizes a b c c259] [--precisions float32 bfloat16]
                                     [--calls 20] [--steps-per-call S] [--compare-autodiff]
                                     [--skip-torch] [--skip-depth]

What it prints, in order:
  the machine: JAX version and device, the CPU model and the features that decide matmul speed
    (`peak.cpu_features`: avx2, avx512f, avx512_bf16, amx_bf16, amx_tile), and whether it has
    native bfloat16 (`peak.has_native_bf16`);
  the two matmul peaks (`peak.measure_peak_flops`, 2048^3, best of 5), each before and after
    the timed runs (the higher is used, since other tenants lower both): float32 (`a @ b`) and
    bfloat16 operands with float32 accumulation (`lax.dot(..., preferred_element_type=f32)`),
    the one a bfloat16-compute step multiplies in; both are recorded in the peak cache
    (`peak.record_peak`), which `lm train` uses for MFU;
  a table, one row per size and step:
    lm fp32 / lm bf16  the real train step (`train.make_train_step`: AdamW + clipping, S fused
                       steps per call) with `model.compute_dtype` float32 / bfloat16
                       (--precisions; default both); float32 parameters and optimizer state
                       either way;
    ... autodiff       with --compare-autodiff, the same with `model.grad_impl=autodiff`;
    torch fp32         the same GPT in PyTorch eager (`TorchStep`), AdamW + clipping, S steps
                       per call, torch threads = the cores this process may use;
    torch bf16 autocast  the same under `torch.autocast("cpu", dtype=bfloat16)`, its best
                       configuration where bfloat16 is native (run there when bfloat16 is
                       among --precisions; elsewhere it is far slower than fp32).
    All steps of a size are interleaved call by call, so they see the same load. Columns:
    tokens/s median over --calls timed calls (best in brackets); MFU = median tokens/s x the
    FLOPs the step multiplies (`flops_per_token(cfg, T)["hardware"]`) / the peak of the
    row's precision (bf16 rows against the bfloat16-operand peak); tokens per CPU-second (all
    threads; on a shared machine wall time mostly measures the other tenants, CPU time much
    less so); compile time (lower + compile, persistent cache off); the data path's share:
    `data.batch_at` on a memory-mapped uint16 token file for a call's S steps, stacked as the
    loop's host_batches does, plus `device_put`, over the call's time (the loop prefetches it
    on a thread, so it overlaps);
  compile time vs depth: the train step at 2 and 12 layers, 64 and 384 wide (the layer scan
    should keep 12 within 1.5x of 2); --skip-depth skips it;
  an acceptance block computed from the rows (issue 13's targets; n/a where a row is missing
  or the target does not apply), ending "K of M measured targets FAIL":
    lm's best precision over torch bf16 autocast at c259 and lm bf16's MFU at c259 against the
    bfloat16-operand peak (both only where bfloat16 is native), lm in its default precision
    (auto's pick) over torch fp32 at a, and, at every size run in both precisions, that
    `model.compute_dtype=auto`'s pick on this machine (lm/hardware/precision.py) is the faster one
    (within 3%).

Sizes: GPT-2-style models (layernorm, learned positions, tanh gelu, tied embeddings, no
biases, as in configs/sweeps/cpu-tiny.yaml; random weights and tokens):
  a     2 layers x 64 wide,  4 heads, seq 64,  batch 64, vocab 259 (the byte-level CPU sweeps)
  b     4 layers x 256 wide, 4 heads, seq 256, batch 16, vocab 4096
  c     6 layers x 384 wide, 6 heads, seq 256, batch 8,  vocab 4096
  c259  c with vocab 259 (the byte tokenizer): issue 13's comparison shape
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

# Before JAX starts its threads: the malloc setting the CLI applies (lm.hardware.xla_env), without
# the CLI's persistent compilation cache, which would turn compile times into cache loads.
from lm.hardware import xla_env

MALLOC_KEPT = xla_env.keep_freed_memory()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import numpy as np

from lm.config import PRESETS, Config, from_dict
from lm.data import dataset
from lm.hardware import peak, precision
from lm.model import flops
from lm.training import sharding, train

SIZES = {
    "a": dict(n_layers=2, d_model=64, n_heads=4, vocab_size=259, seq=64, batch=64),
    "b": dict(n_layers=4, d_model=256, n_heads=4, vocab_size=4096, seq=256, batch=16),
    "c": dict(n_layers=6, d_model=384, n_heads=6, vocab_size=4096, seq=256, batch=8),
    "c259": dict(n_layers=6, d_model=384, n_heads=6, vocab_size=259, seq=256, batch=8),
}
SHORT = {"float32": "fp32", "bfloat16": "bf16"}  # model.compute_dtype -> row label
# Issue 13's acceptance targets (the measured figures they are checked against come from the run).
TARGET_VS_TORCH_BF16 = 1.2  # lm's best precision / torch bf16 autocast, tokens/s at c259
TARGET_VS_TORCH_FP32 = 1.5  # lm in its default precision / torch fp32, tokens/s at a
TARGET_BF16_MFU = 0.70  # lm bf16 at c259, against the bfloat16-operand peak
AUTO_TIE = 0.03  # auto's pick may be this much slower than the other precision (noise)


def make_config(size: str, steps_per_call: int | None, n_layers: int | None = None) -> Config:
    s = dict(SIZES[size])
    seq, batch = s.pop("seq"), s.pop("batch")
    if n_layers is not None:
        s["n_layers"] = n_layers
    train_cfg = dict(seq_len=seq, batch_size=batch)
    if steps_per_call is not None:
        train_cfg["steps_per_call"] = steps_per_call
    m = {**PRESETS["gpt2"], **s, "bias": False, "max_seq_len": seq}
    return from_dict({"preset": "gpt2", "model": m, "train": train_cfg})


def with_model(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


def n_cores() -> int:
    """The cores this process may run on (its affinity), else all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Timed:
    """What the table needs of a timed step: one call() runs `steps_per_call` optimizer steps
    on `tokens` tokens; call(record=True) appends its wall and CPU seconds."""

    engine: str  # "lm" or "torch"
    dtype: str  # the precision the step multiplies in: "float32" or "bfloat16"
    steps_per_call: int
    tokens: int
    compile_s: float | None = None

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self) -> None:
        raise NotImplementedError

    def call(self, record: bool = False) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        self.run()
        if record:
            self.wall.append(time.perf_counter() - t0)
            self.cpu.append(time.process_time() - c0)


class Step(Timed):
    """One compiled lm train step, its state and a fixed device batch for one call."""

    engine = "lm"

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg, t = cfg, cfg.train
        self.dtype = cfg.model.compute_dtype
        lay = train.layout(cfg, sharding.make_mesh(cfg.mesh))
        self.state = train.create_state(cfg, lay)
        self.steps_per_call = S = t.steps_per_call
        self.batch_shard = sharding.batch_sharding(lay.mesh, 4, 2)
        rng = np.random.default_rng(0)
        host = rng.integers(0, cfg.model.vocab_size, (S, 1, t.batch_size, t.seq_len + 1))
        self.batches = jax.device_put(host.astype(np.int32), self.batch_shard)
        step = train.make_train_step(cfg, lay)
        t0 = time.perf_counter()
        self.fn = step.lower(self.state, self.batches).compile()
        self.compile_s = time.perf_counter() - t0
        self.tokens = S * t.batch_size * t.seq_len
        self.call()  # the first run allocates; not timed

    def run(self) -> None:
        self.state, metrics = self.fn(self.state, self.batches)
        jax.block_until_ready(metrics)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_gpt(cfg: Config):
    """The lm GPT of `cfg` in PyTorch: layernorm (with bias), learned positions, tanh gelu,
    tied embeddings, bias-free linears, lm's initialisation (residual outputs scaled by
    1/sqrt(2L))."""
    import torch.nn.functional as F
    from torch import nn

    m = cfg.model
    D, N, L, V = m.d_model, m.n_heads, m.n_layers, m.vocab_size
    T, F4, eps = cfg.train.seq_len, m.ffw_dim, m.norm_eps

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(D, eps=eps), nn.LayerNorm(D, eps=eps)
            self.qkv, self.proj = nn.Linear(D, 3 * D, bias=m.bias), nn.Linear(D, D, bias=m.bias)
            self.up, self.down = nn.Linear(D, F4, bias=m.bias), nn.Linear(F4, D, bias=m.bias)

        def forward(self, x):
            B = x.shape[0]
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, N, D // N).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
            return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(D, eps=eps)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe.weight[:T]
            for blk in self.blocks:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # tied
            return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))

    net = GPT()
    for name, p in net.named_parameters():
        if p.dim() == 2:
            out = name.endswith(("proj.weight", "down.weight"))
            nn.init.normal_(p, std=m.init_std / math.sqrt(2 * L) if out else m.init_std)
    return net


class TorchStep(Timed):
    """The same GPT in PyTorch eager, AdamW (lm's hyperparameters and decay mask) + clipping,
    `steps_per_call` steps per call; bf16: forward under torch.autocast("cpu", bfloat16)."""

    engine = "torch"

    def __init__(self, cfg: Config, bf16: bool):
        import torch

        super().__init__()
        t = cfg.train
        self.dtype = "bfloat16" if bf16 else "float32"
        self.steps_per_call = S = t.steps_per_call
        self.tokens = S * t.batch_size * t.seq_len
        torch.manual_seed(0)
        self.net = net = torch_gpt(cfg)
        # weight decay as lm's decay_mask: matrices, embeddings only by config, never norms
        decay, no_decay = [], []
        for name, p in net.named_parameters():
            embedding = name.startswith(("wte", "wpe"))
            use = p.dim() == 2 and (t.decay_embeddings or not embedding)
            (decay if use else no_decay).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay}],
            lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, weight_decay=0.0,
        )  # fmt: skip
        self.clip = t.clip_norm
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
        V = cfg.model.vocab_size
        self.batches = torch.randint(0, V, (S, t.batch_size, t.seq_len + 1))
        self.call()  # warm-up: allocations and oneDNN primitive caches; not timed

    def run(self) -> None:
        import torch

        for batch in self.batches:
            with self.autocast:
                loss = self.net(batch[:, :-1], batch[:, 1:])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
            self.opt.step()


def compile_time(cfg: Config) -> float:
    lay = train.layout(cfg, sharding.make_mesh(cfg.mesh))
    t = cfg.train
    batches = jax.ShapeDtypeStruct((t.steps_per_call, 1, t.batch_size, t.seq_len + 1), np.int32)
    step = train.make_train_step(cfg, lay)
    t0 = time.perf_counter()
    step.lower(lay.abstract, batches).compile()
    return time.perf_counter() - t0


def data_path_seconds(cfg: Config, tokens: np.ndarray, batch_shard, repeats: int) -> float:
    """Median seconds to build one call's batches (as lm.training.loop does) and put them on
    device."""
    t = cfg.train
    S, B, T = t.steps_per_call, t.batch_size, t.seq_len
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        host = np.stack(
            [
                dataset.batch_at(tokens, t.seed, r * S + s, B, T).reshape(1, B, T + 1)
                for s in range(S)
            ]
        )
        jax.block_until_ready(jax.device_put(host, batch_shard))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclasses.dataclass
class Row:
    size: str
    name: str
    step: Timed
    flops_per_token: float
    data_share: float | None = None

    @property
    def median(self) -> float:  # tokens/s
        return self.step.tokens / statistics.median(self.step.wall)

    @property
    def best(self) -> float:
        return self.step.tokens / min(self.step.wall)

    @property
    def per_cpu_s(self) -> float:
        return self.step.tokens / statistics.median(self.step.cpu)

    def mfu(self, peaks: dict[str, float]) -> float:
        return self.median * self.flops_per_token / peaks[peak.precision_of(self.step.dtype)]


def measure_peaks() -> dict[str, float]:
    return {p: peak.measure_peak_flops(precision=p) for p in peak.PRECISIONS}


def print_peaks(label: str, peaks: dict[str, float]) -> None:
    f32, bf16 = peaks["float32"] / 1e9, peaks["bf16_f32acc"] / 1e9
    print(
        f"matmul peak {label}: fp32 {f32:.0f}, bf16 operands + fp32 accumulation {bf16:.0f} GFLOP/s"
    )


def print_table(rows: list[Row], peaks: dict[str, float]) -> None:
    print(
        f"\n{'size':4s} {'step':20s} {'S':>2s} {'tokens/s median (best)':>24s} {'MFU':>5s} "
        f"{'tok/CPU-s':>9s} {'compile':>8s} {'data path':>10s}"
    )
    for r in rows:
        comp = f"{r.step.compile_s:7.1f}s" if r.step.compile_s is not None else f"{'':8s}"
        share = f"{100 * r.data_share:9.1f}%" if r.data_share is not None else ""
        print(
            f"{r.size:4s} {r.name:20s} {r.step.steps_per_call:2d} {r.median:12.0f} "
            f"({r.best:8.0f}) {100 * r.mfu(peaks):4.0f}% {r.per_cpu_s:9.0f} {comp} {share}"
        )
    print(
        "MFU: median tokens/s x hardware FLOPs per token / the peak of the row's precision "
        "(bf16 rows: the bf16-operand peak)\n"
        "data path: lm.data.dataset.batch_at on a uint16 memmap + device_put, share of a call's "
        "time"
    )


class Verdict(NamedTuple):
    label: str
    value: float | None  # None: not measured in this run
    target: float
    unit: str  # "x" (a ratio) or "%"
    missing: str  # what the run lacked, or why the target does not apply here

    @property
    def passed(self) -> bool | None:
        return None if self.value is None else self.value >= self.target

    def line(self) -> str:
        if self.value is None:
            return f"  {self.label:58s} n/a ({self.missing})"
        shown = f"{self.value:.2f}x" if self.unit == "x" else f"{100 * self.value:.0f}%"
        goal = f">= {self.target:.2f}x" if self.unit == "x" else f">= {100 * self.target:.0f}%"
        return (
            f"  {self.label:58s} {shown:>6s}  target {goal:8s} {'PASS' if self.passed else 'FAIL'}"
        )


def acceptance(
    rows: list[Row], peaks: dict[str, float], native_bf16: bool, auto_dtype: str
) -> list[Verdict]:
    """Issue 13's targets, checked against this run's medians. The bf16 targets apply where
    bfloat16 is native; everywhere, `model.compute_dtype=auto`'s pick (`auto_dtype`) must be
    the faster precision at each size measured in both (within AUTO_TIE: a tie)."""

    def row(size: str, name: str) -> Row | None:
        return next((r for r in rows if r.size == size and r.name == name), None)

    not_native = "a target for CPUs with native bfloat16; this one converts it in software"
    lm_c259 = [r for r in rows if r.size == "c259" and r.step.engine == "lm"]
    best = max(
        (r for r in lm_c259 if "autodiff" not in r.name), key=lambda r: r.median, default=None
    )
    torch_bf16, lm_bf16 = row("c259", "torch bf16 autocast"), row("c259", "lm bf16")
    picked = f"lm {SHORT[auto_dtype]}"  # what `lm train` runs by default here
    lm_a, torch_a = row("a", picked), row("a", "torch fp32")
    out = [
        Verdict(
            f"c259: lm best ({best.name if best else 'either precision'}) / torch bf16 autocast",
            best.median / torch_bf16.median if best and torch_bf16 and native_bf16 else None,
            TARGET_VS_TORCH_BF16,
            "x",
            "--sizes c259, torch and bfloat16 in --precisions" if native_bf16 else not_native,
        ),
        Verdict(
            f"a: lm default ({picked}) / torch fp32",
            lm_a.median / torch_a.median if lm_a and torch_a else None,
            TARGET_VS_TORCH_FP32,
            "x",
            f"--sizes a, torch and {auto_dtype} in --precisions",
        ),
        Verdict(
            "c259: lm bf16 MFU vs the bf16-operand peak",
            lm_bf16.mfu(peaks) if lm_bf16 and native_bf16 else None,
            TARGET_BF16_MFU,
            "%",
            "--sizes c259 and bfloat16 in --precisions" if native_bf16 else not_native,
        ),
    ]
    other = "float32" if auto_dtype == "bfloat16" else "bfloat16"
    for size in SIZES:
        mine, rest = row(size, picked), row(size, f"lm {SHORT[other]}")
        if mine or rest:
            out.append(Verdict(
                f"{size}: auto's pick ({picked}) / lm {SHORT[other]}",
                mine.median / rest.median if mine and rest else None,
                1 - AUTO_TIE,
                "x",
                "both precisions in --precisions",
            ))  # fmt: skip
    return out


def print_acceptance(verdicts: list[Verdict], auto_why: str) -> None:
    print("\nacceptance (issue 13; from the medians above):")
    print(f"  model.compute_dtype=auto picks here: {auto_why}")
    for v in verdicts:
        print(v.line())
    failed = sum(v.passed is False for v in verdicts)
    print(f"{failed} of {sum(v.passed is not None for v in verdicts)} measured targets FAIL")


def main() -> None:
    native_bf16 = peak.has_native_bf16()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument(
        "--precisions", nargs="+", choices=list(SHORT),
        default=["float32", "bfloat16"],
        help="model.compute_dtype of the lm rows; bfloat16 also adds torch's autocast row "
        "(default both, which the check of model.compute_dtype=auto's pick needs)",
    )  # fmt: skip
    ap.add_argument("--calls", type=int, default=20, help="timed calls per size (a: x4)")
    ap.add_argument("--steps-per-call", type=int, default=None, help="default: the config's")
    ap.add_argument("--compare-autodiff", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-depth", action="store_true")
    args = ap.parse_args()
    jax.config.update("jax_compilation_cache_dir", None)  # compile times must be real

    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"{n_cores()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"malloc keeps freed memory (lm.hardware.xla_env): {MALLOC_KEPT}"
    )
    feats = peak.cpu_features()
    shown = " ".join(f for f in peak.CPU_FEATURES if f in feats) or "none of " + " ".join(
        peak.CPU_FEATURES
    )
    print(f"CPU {peak.cpu_model()}: {shown}; native bfloat16: {'yes' if native_bf16 else 'no'}")
    use_torch = not args.skip_torch and torch_available()
    if use_torch:
        import torch

        torch.set_num_threads(n_cores())
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if not native_bf16:
            # Not the peer's best configuration here, and slow beyond use: on a 2-core AVX2
            # EPYC it had not finished size b's 6 timed calls after 30 minutes (2026-12-07).
            print("torch bf16 autocast: not run (no native bfloat16 on this CPU)")
    elif not args.skip_torch:
        print("torch not installed: no torch rows")
    before = measure_peaks()
    print_peaks("before (2048^3, best of 5)", before)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.u16"
        n_tok = 8_000_000
        np.random.default_rng(0).integers(0, 259, n_tok, dtype=np.uint16).tofile(path)
        tokens = np.memmap(path, dtype=np.uint16, mode="r", shape=(n_tok,))

        for size in args.sizes:
            base = make_config(size, args.steps_per_call)
            variants: dict[str, Timed] = {}
            for prec in args.precisions:
                cfg = with_model(base, compute_dtype=prec)
                variants[f"lm {SHORT[prec]}"] = Step(cfg)
                if args.compare_autodiff:
                    variants[f"lm {SHORT[prec]} autodiff"] = Step(
                        with_model(cfg, grad_impl="autodiff")
                    )
            if use_torch:
                variants["torch fp32"] = TorchStep(base, bf16=False)
                if "bfloat16" in args.precisions and native_bf16:
                    variants["torch bf16 autocast"] = TorchStep(base, bf16=True)
            calls = args.calls * (4 if size == "a" else 1)
            for _ in range(calls):
                for v in variants.values():  # interleaved: all see the same load
                    v.call(record=True)
            first = next(v for v in variants.values() if isinstance(v, Step))
            data_s = data_path_seconds(base, tokens, first.batch_shard, 20)
            fpt = flops.flops_per_token(base.model, base.train.seq_len)["hardware"]
            for name, v in variants.items():
                share = None
                if v.engine == "lm" and not name.endswith("autodiff"):
                    share = data_s / statistics.median(v.wall)
                rows.append(Row(size, name, v, fpt, share))

    after = measure_peaks()
    print_peaks("after", after)
    n_dev = jax.device_count()
    peaks = {p: max(before[p], after[p]) * n_dev for p in peak.PRECISIONS}
    for p, flops_per_s in peaks.items():  # runs' MFU then uses the best peak seen here
        peak.record_peak(flops_per_s, precision=p)
    print_peaks("used (the higher, all devices)", peaks)
    print_table(rows, peaks)

    if not args.skip_depth:
        print("\ncompile time vs depth (train step, persistent cache off):")
        for size in ("a", "c"):
            t2 = compile_time(make_config(size, args.steps_per_call, n_layers=2))
            t12 = compile_time(make_config(size, args.steps_per_call, n_layers=12))
            d = SIZES[size]["d_model"]
            print(f"  {d}-wide: 2 layers {t2:.1f}s, 12 layers {t12:.1f}s: ratio {t12 / t2:.2f}")
    auto = precision.rule()  # the rule itself, whatever LM_AUTO_COMPUTE_DTYPE says
    print_acceptance(acceptance(rows, peaks, native_bf16, auto.dtype), f"{auto.dtype} ({auto.why})")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
