"""Training a sweep's members side by side: units, shares, slices and worker processes.

A sweep is dozens of independent small models, and a small model cannot use a whole machine
(on a 2-core VM, one 2x64 run trained ~213k tokens/s on both cores, two runs pinned one per
core ~321k in all). So:

- **Units.** The members are grouped into units whose members must run in order, in one
  process: a WSD trunk with its branches (each branch starts from the trunk's checkpoint at its
  branch step, and one process keeps the size's compiled programs), and every other member
  alone. Units are independent of each other within a stage (the LR sweep, then the rest).
- **Slices.** On one machine, units run in worker processes on disjoint slices: CPU cores
  (each worker's threads are pinned to its cores) or accelerator devices (each worker sees only
  its devices, so every member's mesh is a sub-mesh of the machine). The next unit, longest
  first, goes to the first free worker.
- **Shares.** On many machines, each host trains its share: a deterministic longest-first
  partition of the units, computed alike by every host. The shared output directory is the only
  coordination (done.json per member, and a flock per unit in claims/ where the filesystem has
  flock).

A member's numbers do not depend on where it ran: its batch at step s is a pure function of
(seed, s), its state starts from its seed or its trunk's checkpoint, and a CPU worker keeps the
thread pool of the process that started it (see `worker_main`). On accelerators a worker's
sub-mesh has fewer devices than the whole machine, which splits reductions differently.

This module imports no JAX at the top (its own imports load none): a worker sets its
environment before JAX starts.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm.config import ConfigError
from lm.hardware.xla_env import configure
from lm.util import dirlock

# ---------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    name: str  # its first member: the trunk, or the member itself
    members: tuple[str, ...]  # that member first, then its branches by branch step
    cost: float  # hardware FLOPs to train every member of it
    group: str


def make_units(members: Iterable, work: dict[str, float]) -> list[Unit]:
    """One unit per member that is nobody's branch, holding its branches (by branch step)."""
    members = list(members)
    branches: dict[str, list] = {}
    for m in members:
        if m.trunk is not None:
            branches.setdefault(m.trunk, []).append(m)
    units = []
    for m in members:
        if m.trunk is not None:
            continue
        names = (m.name, *(b.name for b in sorted(branches.get(m.name, ()),
                                                  key=lambda b: b.branch_step)))  # fmt: skip
        units.append(Unit(m.name, names, sum(work[n] for n in names), m.group))
    return units


def longest_first(units: Iterable[Unit]) -> list[Unit]:
    # Ties by name, so that every host orders (and so partitions) the units alike.
    return sorted(units, key=lambda u: (-u.cost, u.name))


def partition(units: Iterable[Unit], count: int) -> list[list[Unit]]:
    """Every unit to one of `count` hosts: longest first, each to the least loaded host so far
    (lowest index on ties). Deterministic, so every host computes the same partition; each
    host's list is longest first."""
    loads = [0.0] * count
    shares: list[list[Unit]] = [[] for _ in range(count)]
    for u in longest_first(units):
        j = min(range(count), key=lambda k: (loads[k], k))
        loads[j] += u.cost
        shares[j].append(u)
    return shares


def makespan(costs: Iterable[float], speeds: list[float]) -> float:
    """When the last of `costs` ends if each, longest first, goes to the first free worker
    (worker k does speeds[k] cost units a second): how the pool schedules."""
    free = [(0.0, k) for k in range(len(speeds))]
    end = 0.0
    for c in sorted(costs, reverse=True):
        t, k = heapq.heappop(free)
        t += c / speeds[k]
        end = max(end, t)
        heapq.heappush(free, (t, k))
    return end


# ---------------------------------------------------------------- shares (many hosts)


@dataclass(frozen=True)
class Share:
    index: int = 0
    count: int = 1
    source: str = ""  # where index and count came from, for the log


def _env_int(environ, key: str) -> int | None:
    v = environ.get(key)
    if v is None or v.strip() == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{key}={v!r}: expected an integer") from None


def share_from(index: int | None = None, count: int | None = None, environ=None) -> Share:
    """This host's index and the host count: the flags, else LM_WORKER_INDEX / LM_NUM_WORKERS,
    else a SLURM array task (SLURM_ARRAY_TASK_ID from SLURM_ARRAY_TASK_MIN in steps of
    SLURM_ARRAY_TASK_STEP, of SLURM_ARRAY_TASK_COUNT), else a Kubernetes indexed Job's
    JOB_COMPLETION_INDEX (Kubernetes does not export the completion count: give it)."""
    env = os.environ if environ is None else environ
    src = ["flags"] if index is not None or count is not None else []

    def take(current: int | None, key: str) -> int | None:
        if current is not None:
            return current
        v = _env_int(env, key)
        if v is not None:
            src.append(key)
        return v

    index = take(index, "LM_WORKER_INDEX")
    count = take(count, "LM_NUM_WORKERS")
    if index is None and (tid := _env_int(env, "SLURM_ARRAY_TASK_ID")) is not None:
        lo = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
        index = (tid - lo) // step
        src.append("SLURM_ARRAY_TASK_ID")
        count = take(count, "SLURM_ARRAY_TASK_COUNT")
    index = take(index, "JOB_COMPLETION_INDEX")
    if index is None and count is None:
        return Share()
    if count is None:
        raise ValueError(
            f"worker index {index} (from {', '.join(src)}) without a worker count: give "
            "--num-workers N (or LM_NUM_WORKERS), N hosts running the same command"
        )
    if index is None:
        raise ValueError(f"--num-workers {count} without --worker-index (or LM_WORKER_INDEX)")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker index {index} of {count}: needs 0 <= index < count")
    return Share(index, count, ", ".join(src))


# ---------------------------------------------------------------- the machine and its slices


@dataclass(frozen=True)
class Machine:
    platform: str  # "cpu", "gpu" or "tpu"
    devices: int  # devices one process sees (on CPU: XLA's host devices, usually 1)
    cpus: tuple[int, ...]  # cores this process may run on
    memory: float | None = None  # bytes per accelerator device, where known
    ram: float | None = None  # bytes of host memory


_FAKE_DEVICES = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def _host_devices(environ) -> int:
    m = _FAKE_DEVICES.search(environ.get("XLA_FLAGS", ""))
    if m:
        return int(m.group(1))
    return _env_int(environ, "JAX_NUM_CPU_DEVICES") or 1


def _accelerator_plugins() -> bool:
    """Whether JAX could find an accelerator here: a PJRT plugin (CUDA, ROCm, ...) or libtpu.
    Without one, JAX runs on the CPU, and no probe process is needed to know it."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("libtpu") is not None:
        return True
    if importlib.util.find_spec("jax_plugins") is not None:
        import pkgutil

        import jax_plugins

        if any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)):
            return True
    return bool(importlib.metadata.entry_points(group="jax_plugins"))


_PROBE = (
    "import json, jax\n"
    "d = jax.local_devices()\n"
    "s = d[0].memory_stats() or {}\n"
    "print(json.dumps({'platform': d[0].platform, 'devices': len(d),"
    " 'memory': s.get('bytes_limit')}))\n"
)


def probe_machine(environ=None) -> Machine:
    """What this process would train on, without starting a JAX backend in it (a GPU backend
    would take the memory the workers need): the CPU from the environment alone, an
    accelerator from a short-lived probe process."""
    env = dict(os.environ if environ is None else environ)
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    try:
        ram = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        ram = None
    platforms = env.get("JAX_PLATFORMS", "").strip()
    if platforms == "cpu" or (not platforms and not _accelerator_plugins()):
        return Machine("cpu", _host_devices(env), cpus, None, ram)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"probing JAX's devices failed: {r.stderr.strip()[-2000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    if got["platform"] == "cpu":
        return Machine("cpu", got["devices"], cpus, None, ram)
    return Machine(got["platform"], got["devices"], cpus, got["memory"], ram)


@dataclass(frozen=True)
class Slice:
    index: int
    platform: str
    cpus: tuple[int, ...]  # cores the worker pins itself to; empty: not pinned
    devices: tuple[int, ...]  # its accelerators (ids); on CPU, its host devices 0..k-1
    fake_devices: bool = False  # CPU host devices from XLA_FLAGS (tests of sub-meshes)

    def env(self, environ=None) -> dict[str, str]:
        """The environment variables that confine a worker to this slice."""
        env = os.environ if environ is None else environ
        out: dict[str, str] = {}
        if self.cpus:
            out["LM_SWEEP_CPUS"] = ",".join(map(str, self.cpus))
        k = len(self.devices)
        if self.platform == "cpu":
            if self.fake_devices:
                flags = _FAKE_DEVICES.sub("", env.get("XLA_FLAGS", "")).split()
                out["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={k}"])
                if "JAX_NUM_CPU_DEVICES" in env:
                    out["JAX_NUM_CPU_DEVICES"] = str(k)
        elif self.platform == "gpu":
            # Ids relative to what this process was given, as CUDA counts them.
            seen = env.get("CUDA_VISIBLE_DEVICES")
            ids = seen.split(",") if seen else None
            out["CUDA_VISIBLE_DEVICES"] = ",".join(ids[d] if ids else str(d) for d in self.devices)
        elif self.platform == "tpu":
            # One TPU process per group of chips on a TPU VM, as libtpu documents it; untested
            # here (no TPU). The chips must form a box: 1, 2 (1x2), 4 (2x2) or 8 (2x4).
            bounds = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}[k]
            port = str(8476 + self.index)
            out.update(
                TPU_VISIBLE_CHIPS=",".join(map(str, self.devices)),
                TPU_CHIPS_PER_PROCESS_BOUNDS=bounds,
                TPU_PROCESS_BOUNDS="1,1,1",
                TPU_MESH_CONTROLLER_ADDRESS=f"localhost:{port}",
                TPU_MESH_CONTROLLER_PORT=port,
            )
        return out


def _split(items: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """n contiguous groups whose sizes differ by at most one (the first ones larger)."""
    q, r = divmod(len(items), n)
    out, at = [], 0
    for k in range(n):
        size = q + (k < r)
        out.append(items[at : at + size])
        at += size
    return out


def check_submesh(members: Iterable, k: int, why: str) -> None:
    """Each member's mesh on k devices exists, and its batch splits evenly over data x fsdp."""
    from lm.training import sharding  # lazy: JAX, which a worker must configure first

    seen = set()
    for m in members:
        t = m.cfg.train
        key = (m.cfg.mesh, t.batch_size, t.grad_accum)
        if key in seen:
            continue
        seen.add(key)
        try:
            shape = sharding.mesh_shape(m.cfg.mesh, k)
        except ConfigError as e:
            raise ConfigError(f"{why}: {k} device(s) per worker: {e}") from None
        shards = shape["data"] * shape["fsdp"]
        micro = t.batch_size // t.grad_accum
        if micro % shards:
            raise ConfigError(
                f"{why}: {k} device(s) per worker shard {m.name}'s batch over {shards}, "
                f"which does not divide its {micro} sequences per step; choose another "
                "--workers or batch size"
            )


def plan_slices(machine: Machine, workers: int, members: Iterable, why: str = "") -> list[Slice]:
    """`workers` disjoint slices of the machine, each able to train every member: on CPU, the
    cores in contiguous groups (and the host devices, when XLA_FLAGS asks for several); on an
    accelerator, the devices in equal contiguous groups."""
    why = why or f"--workers {workers}"
    if workers < 1:
        raise ConfigError(f"{why}: needs at least 1 worker")
    n = machine.devices
    if machine.platform == "cpu":
        if workers > len(machine.cpus):
            raise ConfigError(
                f"{why}: this process may run on {len(machine.cpus)} core(s) and each worker "
                "needs one of its own"
            )
        if n > 1 and n % workers:
            raise ConfigError(f"{why}: {n} host devices (XLA_FLAGS) do not split evenly")
        k = max(1, n // workers)
        check_submesh(members, k, why)
        cpus = _split(machine.cpus, workers) if workers > 1 else [()]
        return [Slice(i, "cpu", c, tuple(range(k)), n > 1) for i, c in enumerate(cpus)]
    if workers > n or n % workers:
        raise ConfigError(f"{why}: {n} {machine.platform} devices do not split into "
                          f"{workers} equal groups")  # fmt: skip
    k = n // workers
    if machine.platform == "tpu" and k not in (1, 2, 4, 8):
        raise ConfigError(f"{why}: {k} TPU chips per worker is not a box libtpu can give")
    check_submesh(members, k, why)
    devs = _split(tuple(range(n)), workers)
    cpus = _split(machine.cpus, workers) if len(machine.cpus) >= workers > 1 else [()] * workers
    pairs = zip(cpus, devs, strict=True)
    return [Slice(i, machine.platform, c, d) for i, (c, d) in enumerate(pairs)]


# How one run's speed grows with the cores XLA:CPU gives it, as speed ~ cores**alpha. From the
# issue's measurement on a 2-core AMD EPYC VM at the sweep's shapes (2x64, seq 64, batch 32:
# 160k tokens/s on one core, 213k on two): alpha = log2(213/160) = 0.41. On a 2-core Intel
# Xeon VM the same run was no faster on two cores than on one (71-146k vs 92-111k tokens/s,
# shared and noisy), so there alpha is lower and side by side gains more
# (benchmarks/bench_sweep_parallel.py: 1.38x on a whole sweep). A larger model uses more
# cores better, and at alpha = 1 separate runs gain nothing; so `auto` also requires the
# estimate to beat one run at a time by AUTO_MARGIN.
CPU_CORE_SCALING = 0.41
AUTO_MARGIN = 1.10
# Below this much work per core, starting the workers (a JAX import and compiles, a few
# seconds each, in parallel) may cost more than running side by side saves. The benchmark's
# sweep, 9.4e11 FLOPs on 2 cores, took 61 s one at a time and 45 s on 2 workers.
MIN_FLOPS_PER_CORE = 2e11


def member_bytes(m) -> float:
    """Rough training memory of one member: fp32 params, grads and two Adam moments, plus
    activations saved for the backward pass (~16 d floats per token and layer, and the
    logits)."""
    from lm.model import flops  # lazy: JAX, which a worker must configure first

    t, mc = m.cfg.train, m.cfg.model
    params = flops.count_params(mc)["total"]
    tokens = t.batch_size // t.grad_accum * t.seq_len
    return 16.0 * params + 4.0 * tokens * (16 * mc.d_model * mc.n_layers + 2 * mc.vocab_size)


def auto_workers(machine: Machine, stages: list[list[float]], members: list,
                 alpha: float = CPU_CORE_SCALING) -> tuple[int, str]:  # fmt: skip
    """How many workers `--workers auto` starts, and why. `stages`: per stage (the LR sweep,
    then the rest), the FLOPs of each unit still to train; every unit of a stage ends before
    the next stage starts.

    CPU: one run at a time on every core, unless a schedule of w workers on w core groups
    (longest unit first to the first free worker, each worker at speed cores**alpha) is
    estimated AUTO_MARGIN faster, the work is worth starting workers for, and w copies of the
    largest member fit in half the RAM. Accelerators: each worker gets the fewest devices
    (a power of two) that hold the largest member in half a device's memory and split every
    batch; as many workers as that gives, but no more than there are units to run at once."""
    widest = max((len(s) for s in stages), default=0)
    if widest <= 1:
        return 1, "at most one unit to train at a time"
    big = max((member_bytes(m) for m in members), default=0.0)
    if machine.platform != "cpu":
        n, k = machine.devices, 1
        while k < n and (n % k or (machine.memory and big / k > machine.memory / 2)
                         or _splits_badly(members, k)):  # fmt: skip
            k *= 2
        w = min(n // k, widest) if n % k == 0 else 1
        if n == 1:
            return 1, f"one {machine.platform} device"
        if w <= 1:
            return 1, f"the largest member needs all {n} {machine.platform} devices"
        return w, (f"{w} workers x {k} {machine.platform} device(s): the largest member "
                   f"(~{big / 2**30:.2f} GiB) fits on {k}")  # fmt: skip
    n = len(machine.cpus)
    if n < 2:
        return 1, "one core"
    total = sum(sum(s) for s in stages)
    if total < MIN_FLOPS_PER_CORE * n:
        return 1, (f"{total:.2g} FLOPs left to train: too little to pay for starting "
                   "workers")  # fmt: skip
    sequential = total / n**alpha
    best, best_t = 1, sequential
    for w in range(2, min(n, widest) + 1):
        if machine.devices > 1 and machine.devices % w:
            continue
        if machine.ram and w * big > machine.ram / 2:
            break
        try:
            check_submesh(members, max(1, machine.devices // w), "auto")
        except ValueError:
            continue
        speeds = [len(c) ** alpha for c in _split(machine.cpus, w)]
        t = sum(makespan(s, speeds) for s in stages)
        if t < best_t:
            best, best_t = w, t
    if best == 1 or best_t * AUTO_MARGIN > sequential:
        return 1, (f"{n} cores: side by side is not estimated {AUTO_MARGIN - 1:.0%} faster "
                   "than one run on all of them")  # fmt: skip
    return best, (f"{n} cores: {best} workers estimated {sequential / best_t:.2f}x as fast as "
                  f"one run on all cores (a run on c cores ~ c^{alpha:g} as fast)")  # fmt: skip


def _splits_badly(members, k: int) -> bool:
    try:
        check_submesh(members, k, "auto")
    except ConfigError:
        return True
    return False


# ---------------------------------------------------------------- worker processes


class WorkerError(RuntimeError):
    """A worker process failed in a way that has no exception class of its own here."""


_WORKER_CODE = "import sys; from lm.scaling.workers import worker_main; worker_main(sys.argv[1])"


def _reraise(ev: dict, log: Path) -> None:
    """The worker's exception as the class the command line knows how to report, if any."""
    # lazy: JAX and the training stack, which only a failing worker's parent needs here
    from lm.training import checkpoint, loop, rundir

    known = (ConfigError, loop.TrainingDiverged, rundir.RunDirError, checkpoint.CheckpointError,
             dirlock.Busy)  # fmt: skip
    msg = f"{ev.get('member') or ev['unit']}: {ev['message']}"
    for cls in known:
        if cls.__name__ == ev["type"]:
            raise cls(msg)
    raise WorkerError(f"{ev['type']}: {msg} (worker log {log})\n{ev.get('trace', '')}")


@dataclass
class _Worker:
    slice: Slice
    proc: subprocess.Popen
    fd: int
    log: Path
    buf: bytes = b""
    unit: Unit | None = None
    info: dict | None = None  # its "ready" event: pid, cores, devices


class Pool:
    """Worker processes, one per slice, each a fresh Python (the slice's environment and core
    pinning must precede JAX's start) that trains the units it is sent, one at a time, and
    keeps its compiled programs and mapped corpus between them. `trainer` ("module:function")
    trains one unit there: see `worker_main`."""

    def __init__(self, slices: list[Slice], log_dir: Path, tag: str = "", *, trainer: str):
        log_dir.mkdir(parents=True, exist_ok=True)
        root = str(Path(__file__).resolve().parents[2])  # the checkout holding `lm`
        self.workers: list[_Worker] = []
        self.sel = selectors.DefaultSelector()
        try:
            for s in slices:
                r, w = os.pipe()
                env = {**os.environ, **s.env(), "LM_SWEEP_EVENTS_FD": str(w),
                       "LM_SWEEP_WORKER": str(s.index)}  # fmt: skip
                env["PYTHONPATH"] = os.pathsep.join(
                    p for p in (root, os.environ.get("PYTHONPATH", "")) if p
                )
                log = log_dir / f"worker{tag}-{s.index}.log"
                with log.open("w") as f:
                    proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, trainer],
                                            stdin=subprocess.PIPE, stdout=f,
                                            stderr=subprocess.STDOUT, env=env, pass_fds=(w,),
                                            text=True)  # fmt: skip
                os.close(w)
                os.set_blocking(r, False)
                wk = _Worker(s, proc, r, log)
                self.sel.register(r, selectors.EVENT_READ, wk)
                self.workers.append(wk)
        except BaseException:
            self.close(kill=True)
            raise

    def _events(self, wk: _Worker) -> list[dict] | None:
        """The complete event lines a worker has written; None at end of file."""
        try:
            chunk = os.read(wk.fd, 1 << 16)
        except BlockingIOError:
            return []
        if not chunk:
            return None
        wk.buf += chunk
        *lines, wk.buf = wk.buf.split(b"\n")
        return [json.loads(x) for x in lines if x.strip()]

    def _died(self, wk: _Worker) -> None:
        try:
            rc = wk.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        tail = wk.log.read_text(errors="replace")[-3000:] if wk.log.is_file() else ""
        doing = f" while training {wk.unit.name}" if wk.unit else ""
        raise WorkerError(
            f"sweep worker {wk.slice.index} exited (status {rc}){doing}; rerun to resume. "
            f"Its log, {wk.log}, ends:\n{tail}"
        )

    def run(self, units: list[Unit], job: Callable[[Unit], dict],
            on_event: Callable[[int, dict], None], tick: Callable[[], None] | None = None,
            tick_s: float = 1.0) -> list[str]:  # fmt: skip
        """Train `units`, longest first, each on the first free worker; `job(unit)` is the
        message a worker gets, `on_event(worker, event)` sees every event. Returns the names
        of units another process was holding (not trained here). The first failure ends the
        stage: the other workers are stopped (their members resume from checkpoints on a
        rerun) and it is raised."""
        pending = longest_first(units)
        held: list[str] = []
        try:
            while pending or any(w.unit for w in self.workers):
                for wk in self.workers:
                    if wk.unit is None and pending and wk.proc.poll() is None:
                        wk.unit = pending.pop(0)
                        try:
                            wk.proc.stdin.write(json.dumps(job(wk.unit)) + "\n")
                            wk.proc.stdin.flush()
                        except BrokenPipeError:
                            self._died(wk)
                if not any(w.unit for w in self.workers):
                    if pending:  # every worker has exited
                        self._died(self.workers[0])
                    break
                for key, _ in self.sel.select(timeout=tick_s):
                    wk = key.data
                    evs = self._events(wk)
                    if evs is None:
                        self.sel.unregister(wk.fd)
                        if wk.unit is not None:
                            self._died(wk)
                        continue
                    for ev in evs:
                        if ev["ev"] == "ready":
                            wk.info = ev
                        elif ev["ev"] == "error":
                            _reraise(ev, wk.log)
                        elif ev["ev"] == "unit":
                            if ev.get("held"):
                                held.append(ev["unit"])
                            wk.unit = None
                        on_event(wk.slice.index, ev)
                if tick is not None:
                    tick()
        except BaseException:
            self.close(kill=True)
            raise
        return held

    def close(self, kill: bool = False) -> None:
        """Stop the workers: at once (kill), else once they have read their last message."""
        for wk in self.workers:
            if wk.proc.poll() is None:
                if kill:
                    wk.proc.send_signal(signal.SIGTERM)
                else:
                    try:
                        wk.proc.stdin.close()
                    except OSError:
                        pass
        for wk in self.workers:
            try:
                wk.proc.wait(timeout=30 if not kill else 10)
            except subprocess.TimeoutExpired:
                wk.proc.kill()
                wk.proc.wait()
            try:
                self.sel.unregister(wk.fd)
            except (KeyError, ValueError):
                pass
            try:
                os.close(wk.fd)
            except OSError:
                pass
        self.workers = []

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close(kill=exc[0] is not None)


def _pin_threads(cpus: set[int]) -> None:
    """Confine every thread of this process to `cpus` (threads started later inherit it)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def worker_main(trainer: str) -> None:
    """A worker process: start JAX, pin to its cores, then train each unit read from stdin (one
    JSON line each) and report events on LM_SWEEP_EVENTS_FD, until stdin closes.

    `trainer`, "module:function", trains one unit: `train(job, send, where, memo)` with the
    job's message, `send(**event)` to report ("start" and "member" events), `where` (this
    worker: index, pid, cores, devices) and `memo`, a dict kept between the worker's units. It
    returns False when another process holds the unit. The pool's owner names it
    (lm.scaling.sweep.train_unit), so this module never imports the sweep, and it is imported
    only once JAX has started and the worker is pinned.

    XLA:CPU sizes its thread pool to the cores the process may run on when its backend starts,
    and a run's losses depend on that size in their last bits (measured: a 2x24 model differs
    from its 4th step on, by 6e-3 in loss after 300 steps at lr 0.02, on 1 thread vs 2), which
    a high learning rate amplifies. So by default (LM_SWEEP_EXACT=1) the worker starts JAX
    before pinning itself: its pool is the size the sweep's own process would have had, its
    members' numbers are those of `--workers 1` on this machine, bit for bit, and its threads
    share the worker's cores. LM_SWEEP_EXACT=0 pins first, sizing the pool to the slice (less
    oversubscription on many-core machines; numbers then depend on the cores per worker)."""
    cpus = os.environ.get("LM_SWEEP_CPUS")
    mask = {int(c) for c in cpus.split(",")} if cpus else None
    exact = os.environ.get("LM_SWEEP_EXACT", "1") != "0"
    if mask and not exact:
        os.sched_setaffinity(0, mask)
    configure()
    import jax

    jax.local_device_count()  # the backend starts here, and with it the thread pool
    if mask and exact:
        _pin_threads(mask)
    events = os.fdopen(int(os.environ["LM_SWEEP_EVENTS_FD"]), "w", buffering=1)

    def send(**ev: Any) -> None:
        events.write(json.dumps(ev) + "\n")

    import importlib

    module, _, name = trainer.partition(":")
    train = getattr(importlib.import_module(module), name)
    where = {"worker": int(os.environ.get("LM_SWEEP_WORKER", "0")), "pid": os.getpid(),
             "cpus": sorted(os.sched_getaffinity(0)), "devices": jax.local_device_count(),
             "platform": jax.default_backend()}  # fmt: skip
    send(ev="ready", **where)
    memo: dict = {}
    for line in sys.stdin:
        job = json.loads(line)
        current: list[str] = [""]  # the member being trained, for an error event

        def send_unit(current=current, **ev: Any) -> None:
            if ev["ev"] == "start":
                current[0] = ev["member"]
            send(**ev)

        try:
            ok = train(job, send_unit, where, memo)
            send(ev="unit", unit=job["name"], held=not ok)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
            send(ev="error", unit=job["name"], member=current[0], type=type(e).__name__,
                 message=str(e), trace=traceback.format_exc()[-4000:])  # fmt: skip
            if not isinstance(e, Exception):
                raise
            return


# ---------------------------------------------------------------- shared-directory helpers


def wall_union(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def sleep_backoff(waited: float) -> float:
    """How long to wait before looking again: soon at first, then every 15 s."""
    s = min(15.0, max(0.5, waited / 4))
    time.sleep(s)
    return s
