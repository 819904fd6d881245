"""lm.inference.request: the one check of sampling values, prompts and token budgets, and the
messages every caller (library, `lm sample`, the server) words its errors with."""

import math
import subprocess
import sys

import numpy as np
import pytest

from lm.inference.request import (
    DEFAULT_NEW_TOKENS,
    GREEDY,
    RequestError,
    SamplingParams,
    check_fits,
    check_prompt,
    check_value,
    new_token_budget,
)

BAD = [
    (dict(temperature=-0.5), "temperature=-0.5: must be >= 0 (0 means greedy)",
     "--temperature -0.5: must be >= 0 (0 means greedy)"),
    (dict(temperature=math.inf), "temperature=inf: must be >= 0 (0 means greedy)", None),
    (dict(temperature="1"), "temperature='1': must be >= 0 (0 means greedy)", None),
    (dict(temperature=None), "temperature=None: must be >= 0 (0 means greedy)", None),
    (dict(top_k=0), "top_k=0: must be an integer >= 1 (or None)",
     "--top-k 0: must be an integer >= 1"),
    (dict(top_k=True), "top_k=True: must be an integer >= 1 (or None)", None),
    (dict(top_p=0.0), "top_p=0.0: must be in (0, 1] (or None)", "--top-p 0.0: must be in (0, 1]"),
    (dict(top_p=np.float32(1.5)), "top_p=np.float32(1.5): must be in (0, 1] (or None)", None),
    (dict(min_p=1.0), "min_p=1.0: must be in [0, 1) (or None)", "--min-p 1.0: must be in [0, 1)"),
    (dict(min_p=[0.1]), "min_p=[0.1]: must be in [0, 1) (or None)", None),  # one value, not rows
]  # fmt: skip


@pytest.mark.parametrize("kwargs,message,flag", BAD)
def test_bad_sampling_params_are_one_line_naming_the_field(kwargs, message, flag):
    with pytest.raises(RequestError) as e:
        SamplingParams(**kwargs)
    assert str(e.value) == message
    (field,) = kwargs
    assert e.value.field == field and isinstance(e.value, ValueError)
    if flag is not None:
        assert e.value.for_flag() == flag


def test_sampling_params_hold_plain_numbers():
    sp = SamplingParams(np.float32(0.5), np.int64(3), 1, 0)
    same = SamplingParams(0.5, 3, 1.0, 0.0)
    assert sp == same and hash(sp) == hash(same)
    assert (type(sp.temperature), type(sp.top_k), type(sp.top_p)) == (float, int, float)
    assert sp.filters() == {"top_k": 3, "top_p": 1.0, "min_p": 0.0}
    assert GREEDY.greedy and not sp.greedy and SamplingParams().filters() == {}
    with pytest.raises(AttributeError):
        sp.temperature = 2.0  # frozen: checked once, valid for good


def test_per_row_values_are_checked_elementwise():
    check_value("temperature", np.asarray([0.0, 1.0]), per_row=True)
    check_value("top_p", np.asarray([0.5, 1.0]), per_row=True)
    with pytest.raises(RequestError, match=r"^min_p="):
        check_value("min_p", np.asarray([0.0, 1.0]), per_row=True)
    with pytest.raises(RequestError, match=r"^temperature="):
        check_value("temperature", np.asarray([1.0]))  # rows only where asked for


def test_prompts():
    check_prompt([0, 9], 10)
    with pytest.raises(RequestError, match=r"^prompts\[2\] is empty: every prompt needs"):
        check_prompt([], 10, "prompts[2]")
    with pytest.raises(RequestError, match=r"^prompt: token ids must be in \[0, 10\)$"):
        check_prompt([3, 10], 10)


def test_a_prompt_that_is_only_read_may_fill_the_context():
    check_fits(64, 64)
    check_fits(10**6, None)
    with pytest.raises(RequestError) as e:
        check_fits(65, 64, prompt="--prompt", bos=True)
    assert str(e.value) == (
        "--prompt: 65 tokens with BOS are more than the model's context (max_seq_len) of 64 tokens"
    )


def test_token_budget():
    assert new_token_budget(5, 64, None) == min(DEFAULT_NEW_TOKENS, 59)
    assert new_token_budget(5, 1000, None) == DEFAULT_NEW_TOKENS
    assert new_token_budget(5, 1000, None, default=16) == 16
    assert new_token_budget(5, 64, 59) == 59  # inclusive: prompt + new == the context
    assert new_token_budget(5, None, 10**6) == 10**6  # no context: a bigram
    ctx = "the model's context (max_seq_len) of 64 tokens"
    with pytest.raises(RequestError) as e:
        new_token_budget(5, 64, 60, field="max_tokens", bos=True)
    assert str(e.value) == (f"max_tokens=60: must be an integer >= 1, and prompt (5 tokens with "
                            f"BOS) + new tokens must fit in {ctx}, so at most 59")  # fmt: skip
    assert e.value.for_flag().startswith("--max-tokens 60: must be an integer >= 1, and prompt")
    with pytest.raises(RequestError) as e:
        new_token_budget(64, 64, None, prompt="messages", bos=True)
    assert str(e.value) == f"messages: 64 tokens with BOS leave no room in {ctx}"
    assert e.value.for_flag() == str(e.value) and e.value.field == "messages"
    for bad in (0, -1, 2.0, True):
        with pytest.raises(RequestError, match=rf"^max_new_tokens={bad!r}: must be an integer"):
            new_token_budget(5, 64, bad)
    with pytest.raises(RequestError, match=r"^max_new_tokens=0: must be an integer >= 1$"):
        new_token_budget(5, None, 0)


def test_the_module_never_imports_jax():
    """The numpy runner imports it."""
    code = "import sys, lm.inference.request; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
