"""Scoring a trained model on a synthetic task (`data.source: "task:sort"` / `"task:add"`):
greedy generation on held-out prompts, checked against their answers.

The tasks themselves (definitions, symbol tokenizer, example generation) are `lm.data.tasks`, a
data source like any other (see `lm.data.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lm.data.tasks import answer, prompt, tokenizer_for
from lm.inference import sampling
from lm.inference.request import GREEDY
from lm.model import transformer

# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # exact match of the whole answer (EOS included)
    correct: int
    total: int
    answer_loss: float  # mean nats per answer token, teacher-forced
    token_accuracy: float  # greedy next-token accuracy on answer tokens, teacher-forced
    failures: list[tuple[list[int], list[int], list[int]]]  # (prompt, want, got), a few


def evaluate(params, cfg, x: np.ndarray, batch: int = 256, keep_failures: int = 5) -> Evaluation:
    """Greedy generation on each input's prompt, compared with its answer; and the loss of the
    answer tokens given everything before them (the continuous metric next to exact match)."""
    d, m = cfg.data, cfg.model
    tok = tokenizer_for(d)
    prompts = [prompt(d, r) for r in x]
    answers = [answer(d, r) for r in x]
    # The answer is checked as far as it fits in the context; with model.max_seq_len one
    # more than train.seq_len (the task configs), all of it does, EOS included.
    n_new = min(max(len(a) for a in answers), m.max_seq_len - max(len(p) for p in prompts))
    if n_new < 1:
        raise ValueError(f"model.max_seq_len={m.max_seq_len}: no room for an answer")
    correct, failures = 0, []
    key = jax.random.PRNGKey(0)
    for i in range(0, len(x), batch):
        P, A = prompts[i : i + batch], answers[i : i + batch]
        got = sampling.generate(params, m, P, key, n_new, GREEDY, eos_id=tok.eos_id,
                                pad_id=tok.pad_id)  # fmt: skip
        for p, a, g in zip(P, A, got, strict=True):
            a = a[:n_new]
            g = list(g)[: len(a)]
            if g == a:
                correct += 1
            elif len(failures) < keep_failures:
                failures.append((p, a, g))

    width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    full = np.full((len(x), width), tok.pad_id, np.int32)
    mask = np.zeros((len(x), width - 1), bool)
    for j, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        full[j, : len(p) + len(a)] = p + a
        mask[j, len(p) - 1 : len(p) + len(a) - 1] = True  # positions that predict the answer

    @jax.jit
    def scores(params, rows_BW):
        logits = transformer.apply(params, rows_BW[:, :-1], m)
        logz = jax.nn.logsumexp(logits, -1)
        tgt = rows_BW[:, 1:]
        picked = jnp.take_along_axis(logits, tgt[..., None], -1)[..., 0]
        return logz - picked, jnp.argmax(logits, -1) == tgt

    nll, hit = [], []
    for i in range(0, len(full), batch):
        chunk = full[i : i + batch]
        pad = batch - len(chunk)
        if pad:  # one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
        l, h = jax.device_get(scores(params, jnp.asarray(chunk)))
        nll.append(l[: batch - pad])
        hit.append(h[: batch - pad])
    nll_a, hit_a = np.concatenate(nll), np.concatenate(hit)
    return Evaluation(
        accuracy=correct / len(x),
        correct=correct,
        total=len(x),
        answer_loss=float(nll_a[mask].mean()),
        token_accuracy=float(hit_a[mask].mean()),
        failures=failures,
    )
