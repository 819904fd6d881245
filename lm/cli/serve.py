"""`lm serve` (lm.serving.api) and `lm chat` (lm.serving.chat). No jax, fastapi or uvicorn at
import time: `lm` builds every parser on each start, and the serve extra is optional."""

from __future__ import annotations

import os
import sys
from typing import Any

from lm.cli.common import UsageError
from lm.cli.generate import RUN_HELP, check_sampling
from lm.inference.load import need_transformer, open_run

SERVE_EPILOG = (
    "Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models (OpenAI's "
    "API: point the openai client's base_url at http://HOST:PORT/v1), and the inspector page "
    "at /. Concurrent requests share one decode batch of --slots sequences; new ones join "
    "between decode steps. More than --max-waiting queued sequences get 429. Sampling "
    "extensions: top_k and min_p (the openai client sends them with extra_body). Chat uses a "
    "plain template (System text, then 'User: ...' and 'Assistant: ...' turns) and stops "
    "at the next '\\nUser:'. Needs: pip install -e '.[serve]'."
)


def add_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP API and the live inspector page for one model",
        description="Serve a trained run (or an exported model file) over HTTP: the OpenAI "
        "completions, chat and models endpoints, with streaming, and a page at / that shows "
        "tokens, next-token probabilities and attention as you type. Listens on 127.0.0.1 "
        "unless --host says otherwise.",
        epilog=SERVE_EPILOG,
    )
    s.add_argument("--run", help=RUN_HELP)
    s.add_argument("--model", metavar="FILE.lm", help="a model file from `lm export`")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    s.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1 and /api (default: $LM_API_KEY; none)",
    )
    s.add_argument("--name", help="the model id clients pass (default: the run's directory name)")
    s.add_argument("--slots", type=int, default=16, help="sequences decoded together (default 16)")
    s.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="sequences that may wait for a slot before requests get 429 (default 256)",
    )
    s.add_argument(
        "--chunk",
        type=int,
        default=4,
        help="decode steps per device call; new requests join between calls (default 4)",
    )
    s.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default warning; info logs each request)",
    )
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser(
        "chat",
        help="talk with a model in the terminal, replies streamed",
        description="An interactive conversation: type a message, the reply streams back. "
        "Lines starting with / are commands: /temp 0.7, /top_k 40, /top_p 0.9, /min_p 0.05, "
        "/max 100, /seed 1, /system TEXT, /history, /reset, /quit (or Ctrl-D). Our models are "
        "base models, so the conversation is written as plain text ('User: ...', "
        "'Assistant: ...'); when it outgrows the context, the oldest turns are dropped.",
        epilog="Reads stdin when it is not a terminal (one message or command per line).",
    )
    c.add_argument("--run", required=True, help=RUN_HELP)
    c.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default 0.8)")
    c.add_argument("--top-k", type=int, help="keep the k likeliest tokens (k >= 1)")
    c.add_argument("--top-p", type=float, help="nucleus: the smallest top set with mass >= p")
    c.add_argument("--min-p", type=float, help="keep tokens with prob >= min_p * the top prob")
    c.add_argument(
        "--max-new-tokens",
        type=int,
        help="tokens per reply (default: as many as fit, up to 200)",
    )
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--system", help="a system message put before the conversation")
    c.set_defaults(func=cmd_chat)


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("lm serve needs its extra: pip install -e '.[serve]'") from None
    from lm.serving import api  # lazy: the serve extra (fastapi) is optional, and jax is heavy

    run = args.run or args.model
    if not run:
        raise UsageError("give --run DIR or --model FILE.lm")
    if args.run and args.model:
        raise UsageError("give --run or --model, not both")
    for flag, v, lo in (("--slots", args.slots, 1), ("--max-waiting", args.max_waiting, 0),
                        ("--chunk", args.chunk, 1), ("--port", args.port, 0)):  # fmt: skip
        if v < lo:
            raise UsageError(f"{flag} {v}: must be >= {lo}")
    if args.port > 65535:
        raise UsageError(f"--port {args.port}: must be <= 65535")
    api_key = args.api_key or os.environ.get("LM_API_KEY") or None
    served = api.load_served(run, args.slots, args.max_waiting, args.chunk, args.name)
    # the first request's shapes now; the other batch shapes compile on a thread meanwhile
    t = served.engine.warmup(background=True)
    app = api.create_app(served, api_key)
    # a backstop above the engine's own queue: more open connections than this get a 503
    server = api.make_server(app, args.host, args.port, log_level=args.log_level,
                         limit_concurrency=args.max_waiting + args.slots + 64)  # fmt: skip
    try:
        sock = api.bind(args.host, args.port)
    except api.ServeError as e:
        raise UsageError(str(e)) from None
    port = sock.getsockname()[1]  # the one the system chose, for --port 0
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{port}"
    print(f"serving {served.name!r} ({served.cfg.kind}, {served.m.max_seq_len}-token context, "
          f"{args.slots} slots; ready in {t:.1f} s, other batch shapes compiling in the "
          "background)")  # fmt: skip
    print(f"  inspector page: {where}/    OpenAI API: {where}/v1 (model={served.name!r})")
    if not is_loopback(args.host) and not api_key:
        print(f"  warning: listening on {args.host} without --api-key: anyone who can reach "
              "this port can use the model")  # fmt: skip
    print("  Ctrl-C stops it", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then passes Ctrl-C on
        pass
    finally:
        served.engine.stop()
    print("stopped")
    return 0


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def cmd_chat(args) -> int:
    from lm.serving import chat  # lazy: jax loads only when a command runs

    args.num_samples = 1
    check_sampling(args)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    cfg, tok, load = open_run(args.run)
    need_transformer(cfg, args.run, "chat with")
    settings = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                "min_p": args.min_p, "max_new": args.max_new_tokens, "seed": args.seed}  # fmt: skip
    session = chat.Session(cfg, tok, load(), settings, sys.stdout, system=args.system)
    return chat.run(session)
