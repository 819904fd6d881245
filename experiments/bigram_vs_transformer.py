"""Bigram vs Transformer: the count bigram baseline and Transformers of increasing size on the
embedded corpus, loss and bits per byte on the same validation windows, and samples.

    python experiments/bigram_vs_transformer.py --out runs/bigram_vs_transformer

Every model is a run directory under --out (reruns resume or skip finished ones). All share the
base config's data and train.seq_len/eval_windows, so `data.val_windows` gives them the very
same windows (checked). Writes loss.png (validation loss against training step, bigram and
unigram as lines), RESULT.md (one table, samples side by side).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COL = 38  # characters per sample column


def load_experiment(path: str, overrides: list[str]) -> dict:
    from lm import config

    raw = config.apply_overrides(config.read_yaml(path), overrides)
    for k in raw:
        if k not in ("base", "transformers", "samples"):
            raise config.ConfigError(
                f"unknown experiment key {k} (known: base, samples, transformers)"
            )
    if not raw.get("transformers"):
        raise config.ConfigError("transformers: needs at least one model")
    return raw


def configs(raw: dict) -> dict:
    """name -> Config: the bigram first, then each Transformer."""
    import copy

    from lm import config

    out = {}
    b = copy.deepcopy(raw["base"])
    b["kind"] = "bigram"
    out["bigram"] = config.from_dict(b)
    for i, t in enumerate(raw["transformers"]):
        t = dict(t)
        name = str(t.pop("name", f"t{i}"))
        c = copy.deepcopy(raw["base"])
        c.setdefault("model", {}).update(t)
        try:
            out[name] = config.from_dict(c)
        except config.ConfigError as e:
            raise config.ConfigError(f"transformers[{i}] ({name}): {e}") from None
    return out


def side_by_side(texts: dict[str, str], width: int = COL) -> str:
    cols = []
    for name, text in texts.items():
        lines = [f"--- {name} ---"[:width]]
        for raw in text.expandtabs(4).split("\n"):
            lines += textwrap.wrap(raw, width, drop_whitespace=False, replace_whitespace=False) or [
                ""
            ]
        cols.append(lines)
    n = max(len(c) for c in cols)
    rows = []
    for i in range(n):
        rows.append(" | ".join((c[i] if i < len(c) else "").ljust(width) for c in cols).rstrip())
    return "\n".join(rows)


def run(raw: dict, out: Path, print_fn=print) -> dict:
    import jax

    from lm.data import dataset
    from lm.data.tokenizer import build_tokenizer
    from lm.inference import sampling
    from lm.inference.request import SamplingParams
    from lm.model import flops
    from lm.training import checkpoint, counting, loop

    common.quiet()
    cfgs = configs(raw)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(next(iter(cfgs.values())).data)
    tokens = dataset.prepare_data(next(iter(cfgs.values())).data, tok, progress=False)
    ref = None
    for c in cfgs.values():  # the claim of the table: one set of windows for all
        w = dataset.val_windows(tokens.val, c.train.eval_windows, c.train.seq_len)
        assert ref is None or np.array_equal(w, ref)
        ref = w
    rows, samples = [], {}
    s = raw.get("samples") or {}
    prompt, temp = s.get("prompt", ""), float(s.get("temperature", 0.8))
    n_tok, key = int(s.get("tokens", 200)), jax.random.PRNGKey(int(s.get("seed", 0)))
    ids = [tok.bos_id, *tok.encode(prompt)]
    # one length for all: what fits in the smallest Transformer context
    n_tok = min(
        [n_tok] + [c.model.max_seq_len - len(ids) for c in cfgs.values() if c.kind != "bigram"]
    )
    for name, c in cfgs.items():
        t0 = time.perf_counter()
        run_dir = out / name
        if c.kind == "bigram":
            r = counting.train_run(c, run_dir, print_fn=print_fn)
            table = r["table"]
            how = SamplingParams(temperature=temp)
            new = sampling.generate_bigram(table, ids, key, n_tok, how, eos_id=tok.eos_id)
            row = dict(params=table.size, non_embedding=0, val_loss=r["val_loss"],
                       se=r["val_loss_se"], bpb=r["val_bpb"], curve=[])  # fmt: skip
        else:
            r = loop.train_run(c, run_dir, progress=False, print_fn=print_fn)
            _, params, _ = checkpoint.load_run(run_dir)
            how = SamplingParams(temperature=temp)
            new = sampling.generate(params, c.model, [ids], key, n_tok, how, eos_id=tok.eos_id,
                                    pad_id=tok.pad_id)[0]  # fmt: skip
            _, evals = common.metrics(run_dir)
            counts = flops.count_params(c.model)
            last = evals[-1]
            row = dict(params=counts["total"], non_embedding=counts["non_embedding"],
                       val_loss=last["val_loss"], se=last["val_loss_se"], bpb=last["val_bpb"],
                       curve=[(e["step"], e["val_loss"]) for e in evals])  # fmt: skip
        # A rerun finds finished runs and only scores them: it keeps the first run's time.
        tfile = run_dir / "experiment_time.json"
        if not tfile.is_file():
            tfile.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
        rows.append(dict(name=name, seconds=json.loads(tfile.read_text())["seconds"], **row))
        samples[name] = prompt + tok.decode([i for i in new if i < tok.vocab_size])
    uni = loop.unigram_entropy(tokens.train, tokens.val, tok.vocab_size)
    return {"rows": rows, "samples": samples, "unigram": uni, "cfgs": cfgs, "windows": ref,
            "temperature": temp, "prompt": prompt, "n_tokens": n_tok}  # fmt: skip


def plot(r: dict, path: Path) -> None:
    fig, (a1, a2) = common.figure(11, 4, 2)
    for row in r["rows"]:
        if row["curve"]:
            a1.plot(
                *zip(*row["curve"], strict=True), "o-", ms=3, label=f"Transformer {row['name']}"
            )
    big = next(x for x in r["rows"] if x["name"] == "bigram")
    a1.axhline(big["val_loss"], c="k", ls="--", label="bigram (counts)")
    a1.axhline(r["unigram"], c="gray", ls=":", label="unigram")
    a1.set_xlabel("training step")
    a1.set_ylabel("validation loss (nats/token)")
    a1.legend(fontsize=8)
    a1.set_title("same validation windows for every model", fontsize=10)
    xs = [x for x in r["rows"] if x["name"] != "bigram"]
    a2.plot([x["non_embedding"] for x in xs], [x["bpb"] for x in xs], "o-", label="Transformers")
    for x in xs:
        a2.annotate(
            x["name"], (x["non_embedding"], x["bpb"]), textcoords="offset points", xytext=(4, 4)
        )
    a2.axhline(big["bpb"], c="k", ls="--", label="bigram")
    a2.set_xscale("log")
    a2.xaxis.set_minor_formatter(__import__("matplotlib").ticker.NullFormatter())
    a2.set_xlabel("non-embedding parameters")
    a2.set_ylabel("bits per byte (final)")
    a2.legend(fontsize=8)
    fig.savefig(path, dpi=100)


def report(r: dict, out: Path) -> str:
    c = next(iter(r["cfgs"].values()))
    t = c.train
    lines = [
        "# Bigram vs Transformer",
        "",
        f"Machine: {common.machine()}.",
        "",
        f"Corpus: `{c.data.source}` ({c.data.tokenizer} tokens). Every Transformer: {t.steps} "
        f"steps of {t.batch_size}x{t.seq_len} tokens ({t.steps * t.batch_size * t.seq_len:,} "
        f"tokens), the same batches. All models scored on the same {len(r['windows'])} "
        f"validation windows of {t.seq_len + 1} tokens. Unigram entropy {r['unigram']:.4f} "
        "nats/token.",
        "",
        "| model | parameters (non-embedding) | val loss (nats/token) | bits per byte | time (s) |",
        "|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        p = (
            f"{x['params']:,} table entries"
            if x["name"] == "bigram"
            else f"{x['params']:,} ({x['non_embedding']:,})"
        )
        lines.append(
            f"| {x['name']} | {p} | {x['val_loss']:.4f} ± {x['se']:.4f} | {x['bpb']:.4f} "
            f"| {x['seconds']:.0f} |"
        )
    lines += [
        "",
        "![loss](loss.png)",
        "",
        f"## Samples (temperature {r['temperature']}, same seed, prompt {r['prompt']!r}, "
        f"up to {r['n_tokens']} tokens)",
        "",
        "```text",
        side_by_side(r["samples"]),
        "```",
    ]
    text = "\n".join(lines) + "\n"
    (out / "RESULT.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = common.parser(__doc__.splitlines()[0], "configs/experiments/bigram_vs_transformer.yaml")
    args = ap.parse_args(argv)
    raw = load_experiment(args.config, args.set)
    out = Path(args.out)
    r = run(raw, out)
    plot(r, out / "loss.png")
    print(report(r, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
