"""A tiny GPT that learns to sort (minGPT's demo): train, evaluate, look inside.

    python experiments/sort.py --out runs/sort

Trains configs/experiments/sort.yaml with the library's own loop (resuming if --out holds a
run), measures exact-match accuracy of greedy autoregressive sorting on 1,000 held-out
sequences (inputs whose hash puts them in the held-out quarter, never trained on; drawn with
repetition, as only 729 inputs exist), on every distinct held-out input, and on 1,000 training
sequences; runs `lm inspect --stages` on "C B A B B C"; writes loss.png, inspect/ and RESULT.md.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PROMPT = "C B A B B C"


def run(
    cfg, out: Path, print_fn=print, inspect_prompt: str | None = PROMPT, n_eval: int = 1000
) -> dict:
    from lm.data import tasks
    from lm.inference import inspection, task_eval
    from lm.inference.request import GREEDY
    from lm.training import checkpoint, loop

    common.quiet()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = loop.train_run(cfg, out / "run", progress=False, print_fn=print_fn)
    t_train = time.perf_counter() - t0
    cfg, params, tok = checkpoint.load_run(out / "run")
    d = cfg.data

    t1 = time.perf_counter()
    held = tasks.inputs(d, "val", n_eval)
    ev_held = task_eval.evaluate(params, cfg, held)
    train_x = tasks.inputs(d, "train", n_eval)
    ev_train = task_eval.evaluate(params, cfg, train_x)
    distinct = tasks.distinct_sort_inputs(d, "val")
    ev_distinct = task_eval.evaluate(params, cfg, distinct)
    t_eval = time.perf_counter() - t1

    train, evals = common.metrics(out / "run")
    fig, (ax,) = common.figure(6, 3.5)
    ax.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train")
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="held-out")
    floor = np.log(d.task_symbols) * d.task_length / cfg.train.seq_len
    ax.axhline(floor, ls="--", c="gray", label="random prompt letters, perfect answers")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token, all positions)")
    ax.legend(fontsize=8)
    fig.savefig(out / "loss.png", dpi=100)

    explained = None
    if inspect_prompt is not None:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            explained = inspection.explain(
                cfg, params, tok, inspect_prompt, GREEDY, 0, out / "inspect", 8, stages=True
            )
        (out / "inspect.txt").write_text(buf.getvalue())
    return {
        "cfg": cfg,
        "summary": summary,
        "held": ev_held,
        "train": ev_train,
        "distinct": ev_distinct,
        "n_distinct": len(distinct),
        "floor": floor,
        "val_loss": evals[-1]["val_loss"],
        "t_train": t_train,
        "t_eval": t_eval,
        "explained": explained,
        "tok": tok,
    }


def report(r: dict, out: Path) -> str:
    cfg, s, tok = r["cfg"], r["summary"], r["tok"]
    ex = r["explained"]
    fails = r["held"].failures
    lines = [
        "# A tiny GPT that learns to sort",
        "",
        f"Machine: {common.machine()}.",
        "",
        f"Model: {cfg.model.n_layers} layers, {cfg.model.n_heads} heads, "
        f"{cfg.model.d_model}-dim embeddings, {s['params']['total']:,} parameters; "
        f"{cfg.train.steps} steps of {cfg.train.batch_size} sequences "
        f"(`configs/experiments/sort.yaml`).",
        f"Task: {cfg.data.task_length} letters of {{{', '.join(tok.symbols)}}} -> sorted, "
        "generated greedily after the input. Held-out inputs: those whose hash falls in the "
        f"held-out {cfg.data.val_fraction:.0%} ({r['n_distinct']} of "
        f"{cfg.data.task_symbols**cfg.data.task_length} possible inputs), never trained on.",
        "",
        "| set | exact match | answer-token loss (nats) |",
        "|---|---|---|",
        f"| {r['held'].total:,} held-out sequences (drawn with repetition) | {r['held'].correct}/"
        f"{r['held'].total} = {r['held'].accuracy:.1%} | {r['held'].answer_loss:.2e} |",
        f"| every distinct held-out input | {r['distinct'].correct}/{r['distinct'].total} = "
        f"{r['distinct'].accuracy:.1%} | {r['distinct'].answer_loss:.2e} |",
        f"| {r['train'].total:,} training sequences | {r['train'].correct}/{r['train'].total} = "
        f"{r['train'].accuracy:.1%} | {r['train'].answer_loss:.2e} |",
        "",
        f"Held-out loss over all positions: {r['val_loss']:.4f} nats/token; the floor "
        f"is {r['floor']:.4f} (the prompt letters are uniform random, ln 3 each, and cannot be "
        "predicted).",
        f"Time: training {r['t_train']:.0f} s (compile {s['timings']['compile']:.0f} s), "
        f"evaluation {r['t_eval']:.0f} s.",
    ]
    if fails:
        lines += ["", "Failures (prompt -> wanted, got):", ""]
        for p, a, g in fails:
            lines.append(f"- `{tok.decode(p)}` -> `{tok.decode(a)}`, got `{tok.decode(g)}`")
    if ex is not None:
        st = ex["stages"]
        lines += [
            "",
            f'## `lm inspect --stages` on "{PROMPT}"',
            "",
            f'`lm inspect --run {out}/run --prompt "{PROMPT}" --stages`. Greedy output: '
            f"`{' '.join(st['pieces'][len(ex['tokens']) :])}`. "
            "Full walk-through (embeddings, layer norm, Q/K/V, attention per head, projection, "
            "MLP, softmax per output position) in `inspect.txt`; figures in `inspect/`.",
            "",
            "Softmax over the vocabulary at each output position:",
            "",
            "| position | "
            + " | ".join(f"`{p}`" for p in tok.pieces(range(tok.vocab_size)))
            + " | chosen |",
            "|---" * (tok.vocab_size + 2) + "|",
        ]
        P = len(ex["tokens"])
        for j, row in enumerate(st["output_probs"]):
            t = P - 1 + j
            chosen = st["pieces"][t + 1]
            lines.append(
                f"| {t} (after `{st['pieces'][t]}`) | "
                + " | ".join(f"{p:.3f}" for p in row)
                + f" | `{chosen}` |"
            )
    text = "\n".join(lines) + "\n"
    (out / "RESULT.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = common.parser(__doc__.splitlines()[0], "configs/experiments/sort.yaml")
    args = ap.parse_args(argv)
    from lm import config

    cfg = config.load(args.config, args.set)
    out = Path(args.out)
    r = run(cfg, out)
    print(report(r, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
