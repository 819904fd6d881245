"""Continuous batching without HTTP: sequences that join and leave a fixed slot batch at step
boundaries get exactly the tokens `sampling.generate` gives each of them alone."""

import threading

import jax
import numpy as np
import pytest
from scipy.special import log_softmax

from lm import config
from lm.inference import engine, sampling
from lm.inference.request import DEFAULT_SAMPLING, GREEDY, SamplingParams
from lm.model import transformer

EOS, PAD = 258, 256


@pytest.fixture(scope="module")
def tiny():
    cfg = config.load(
        None,
        ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=48",
         "train.seq_len=48"],
    )  # fmt: skip
    params = jax.jit(transformer.init, static_argnums=0)(cfg.model, jax.random.PRNGKey(0))
    return params, cfg.model


class Collect:
    """A sequence's callbacks: keeps its tokens, logprobs and finish reason."""

    def __init__(self, stop_after: int | None = None):
        self.tokens, self.logprobs, self.tops, self.reason = [], [], [], None
        self.stop_after = stop_after
        self.done = threading.Event()

    def feed(self, toks, lps, tops):
        self.tokens += toks
        self.logprobs += lps
        self.tops += tops
        return self.stop_after is not None and len(self.tokens) >= self.stop_after

    def finish(self, reason):
        self.reason = reason
        self.done.set()


def _seq(prompt, n, seed, sp: SamplingParams, c: Collect, top_logprobs: int = 0):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    return engine.Sequence(prompt, n, key, sp, c.feed, c.finish, eos_id=EOS,
                           top_logprobs=top_logprobs)  # fmt: skip


def test_sequences_joining_a_busy_batch_get_their_own_tokens(tiny):
    """7 sequences, 3 slots, a 2-step chunk: most join while others are mid-decode, with
    different lengths, budgets and settings (greedy, and sampled with every filter)."""
    params, m = tiny
    rng = np.random.default_rng(0)
    prompts = [[257, *rng.integers(0, 256, int(rng.integers(1, 14))).tolist()] for _ in range(7)]
    settings = [
        GREEDY,
        SamplingParams(temperature=1.0, top_k=20, top_p=0.9),
        SamplingParams(temperature=0.7, min_p=0.05),
    ]
    eng = engine.Engine(params, m, slots=3, chunk=2, pad_id=PAD)
    runs = [(p, 4 + 3 * i, settings[i % 3], Collect()) for i, p in enumerate(prompts)]
    eng.submit([_seq(p, n, i, s, c) for i, (p, n, s, c) in enumerate(runs)])
    eng.run_until_idle()
    assert eng.stats["admitted"] == 7 and not any(eng.active)
    for i, (p, n, s, c) in enumerate(runs):
        # token t is drawn with fold_in(key, t) whatever the budget: one length compiles
        want = sampling.generate(
            params, m, [p], jax.random.fold_in(jax.random.PRNGKey(i), 0), 22, s, eos_id=EOS,
            pad_id=PAD,
        )[0][:n]  # fmt: skip
        assert c.tokens == want, i
        assert c.reason == ("stop" if want[-1] == EOS else "length")


def test_logprobs_are_the_models_own(tiny):
    params, m = tiny
    prompt = [257, 104, 105]
    c = Collect()
    eng = engine.Engine(params, m, slots=3, chunk=2, pad_id=PAD)
    eng.submit([_seq(prompt, 3, 0, GREEDY, c, top_logprobs=4)])
    eng.run_until_idle()
    logits = np.asarray(transformer.apply(params, np.asarray([prompt + c.tokens]), m), np.float64)[
        0
    ]
    logp = log_softmax(logits, axis=-1)
    for t, (tok, lp, top) in enumerate(zip(c.tokens, c.logprobs, c.tops, strict=True)):
        row = logp[len(prompt) - 1 + t]
        assert lp == pytest.approx(row[tok], abs=1e-4)
        assert [i for i, _ in top] == list(np.argsort(-row)[:4])
        assert top[0][0] == tok  # greedy: the chosen token is the likeliest


def test_feed_can_stop_and_cancel_frees_the_slot(tiny):
    params, m = tiny
    eng = engine.Engine(params, m, slots=1, chunk=2, pad_id=PAD)
    stopper, later = Collect(stop_after=3), Collect()
    eng.submit([_seq([257, 1], 20, 0, GREEDY, stopper),
                _seq([257, 2], 2, 1, GREEDY, later)])  # fmt: skip
    eng.run_until_idle()
    assert stopper.reason == "stop" and 3 <= len(stopper.tokens) <= 4
    assert later.reason in ("length", "stop") and later.tokens  # got the freed slot
    gone = Collect()
    seq = _seq([257, 3], 20, 2, GREEDY, gone)
    eng.submit([seq])
    eng.step()
    eng.cancel(seq)
    eng.run_until_idle()
    assert gone.reason == "cancelled" and len(gone.tokens) < 20 and not any(eng.active)


def test_a_full_queue_refuses_all_or_nothing(tiny):
    params, m = tiny
    eng = engine.Engine(params, m, slots=1, max_waiting=2, pad_id=PAD)
    c = Collect()
    with pytest.raises(engine.QueueFull):
        eng.submit([_seq([257], 2, i, DEFAULT_SAMPLING, c) for i in range(3)])
    assert not eng.waiting
    eng.submit([_seq([257], 2, i, DEFAULT_SAMPLING, c) for i in range(2)])
    with pytest.raises(engine.QueueFull):
        eng.submit([_seq([257], 2, 9, DEFAULT_SAMPLING, c)])
    with pytest.raises(ValueError, match="context"):
        eng.submit([_seq([257] * 40, 9, 0, DEFAULT_SAMPLING, c)])  # 40 + 9 > 48
    eng.stop()
    with pytest.raises(engine.EngineStopped):
        eng.submit([_seq([257], 2, 0, DEFAULT_SAMPLING, c)])


def test_the_background_thread_serves_and_stops(tiny):
    params, m = tiny
    eng = engine.Engine(params, m, slots=3, chunk=2, pad_id=PAD).start()
    assert eng.start() is eng and eng.running  # a second start changes nothing
    cs = [Collect() for _ in range(4)]
    eng.submit([_seq([257, 10 + i], 5, i, GREEDY, c)
                for i, c in enumerate(cs)])  # fmt: skip
    for c in cs:
        assert c.done.wait(120), "a sequence never finished"
    eng.stop()
    assert not eng.running
    assert all(c.reason in ("length", "stop") for c in cs)
