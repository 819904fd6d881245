"""`lm serve` under load: throughput and latency against the number of concurrent clients,
with continuous batching (many slots) and one request at a time (one slot).

    python benchmarks/bench_serve.py [--concurrency 1 4 16 32] [--slots 32 1] [--max-tokens 64]

A random-weight byte-level model (default 4 layers x 256 wide, 4 heads, 256-token context)
is served in this process by uvicorn on 127.0.0.1 (a free port), exactly as `lm serve` runs
it. For each slot count and each concurrency c, c client threads each send --requests
completions (a 16-byte prompt, --max-tokens new tokens, temperature 0.8 with a seed per
request) over plain HTTP and wait for each answer before the next. Reported: completion
tokens per second over the whole round (usage.completion_tokens, so sequences that hit EOS
early count what they produced), requests per second, and p50/p95 request latency. An
unmeasured round at each concurrency compiles the batch shapes it uses first. The clients
run in this process too, so they share the cores (and the GIL) with the server. On a
shared machine the figures move with the other tenants' load; the ratio between slot counts
at equal concurrency is the number to read.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time

import jax
import numpy as np

from lm import config
from lm.data.tokenizer import ByteTokenizer
from lm.model import transformer
from lm.serving import api


def _request(port: int, body: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = json.loads(r.read())
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data}")
    return time.perf_counter() - t0, data["usage"]["completion_tokens"]


def run_round(port: int, name: str, clients: int, requests: int, max_tokens: int) -> dict:
    lat: list[float] = []
    toks = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(requests):
            body = {"model": name, "prompt": f"def f_{k:03d}_{j:03d}(x):"[:16],
                    "max_tokens": max_tokens, "temperature": 0.8, "seed": k * 1000 + j}  # fmt: skip
            try:
                dt, n = _request(port, body)
            except Exception as e:  # counted and shown; the round goes on
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                lat.append(dt)
                toks[0] += n

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(1200)
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "tokens_per_s": toks[0] / wall,
        "requests_per_s": len(lat) / wall,
        "p50": float(np.percentile(lat, 50)) if lat else float("nan"),
        "p95": float(np.percentile(lat, 95)) if lat else float("nan"),
        "errors": len(errors),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--slots", type=int, nargs="+", default=[32, 1])
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=4, help="decode steps per device call")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args()

    cfg = config.load(
        None,
        [f"model.n_layers={args.layers}", f"model.d_model={args.width}", "model.n_heads=4",
         "model.max_seq_len=256", "train.seq_len=256"],
    )  # fmt: skip
    params = jax.jit(transformer.init, static_argnums=0)(cfg.model, jax.random.PRNGKey(0))
    print(
        f"model: {args.layers}x{args.width}, vocab {cfg.model.vocab_size}, context 256; "
        f"{args.max_tokens} new tokens per request, {args.requests} requests per client; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    print(f"{'slots':>5} {'clients':>7} {'tokens/s':>9} {'req/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for slots in args.slots:
        served = api.Served(cfg, ByteTokenizer(), params, "bench", slots=slots,
                              max_waiting=4096, chunk=args.chunk)  # fmt: skip
        served.engine.warmup()
        app = api.create_app(served)
        sock = api.bind("127.0.0.1", 0)
        server = api.make_server(app, "127.0.0.1", 0)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = sock.getsockname()[1]
        for c in args.concurrency:
            # unmeasured first: each batch shape (busy rows, cache span) compiles on first use
            run_round(port, "bench", c, 1, args.max_tokens)
            r = run_round(port, "bench", c, args.requests, args.max_tokens)
            err = f"  ({r['errors']} errors)" if r["errors"] else ""
            print(f"{slots:>5} {c:>7} {r['tokens_per_s']:>9.0f} {r['requests_per_s']:>7.2f} "
                  f"{r['p50']:>7.2f} {r['p95']:>7.2f}{err}", flush=True)  # fmt: skip
        server.should_exit = True
        thread.join(20)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
