"""What a generation request asks for, checked in one place: the sampling parameters, the
prompt's token ids, and the token budget that must fit in the model's context (or, for a
prompt that is only read, the prompt alone).

Every way of generating (`lm sample`, `lm chat`, `lm serve`, the continuous-batching engine,
`lm.inference.sampling` and the numpy runner) builds a `SamplingParams` and asks
`new_token_budget`, so the rules and their messages live here once. Numpy only, never jax:
the numpy runner imports this module.

Errors are `RequestError`, one line naming the argument (`top_p=0.0: must be in (0, 1] (or
None)`); it also carries the argument, its value and the rule, so that a command line can name
its own flag instead (`for_flag`: `--top-p 0.0: must be in (0, 1]`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_NEW_TOKENS = 200  # the budget when a request names none: as many as fit, up to this


class RequestError(ValueError):
    """A request that cannot run (a bad sampling value, a prompt or budget that does not fit);
    the message is one line. `field`, `value` and `rule` are set when one argument is at
    fault."""

    def __init__(self, message: str, field: str | None = None, value: Any = None,
                 rule: str | None = None):  # fmt: skip
        super().__init__(message)
        self.field, self.value, self.rule = field, value, rule

    def for_flag(self) -> str:
        """The message naming the command-line flag: `--top-p 0.0: must be in (0, 1]`."""
        if self.field is None or self.rule is None:
            return str(self)
        return f"--{self.field.replace('_', '-')} {self.value}: {self.rule}"


def _bad(field: str, value: Any, rule: str, optional: bool = False) -> RequestError:
    message = f"{field}={value!r}: {rule}" + (" (or None)" if optional else "")
    return RequestError(message, field, value, rule)


# ---------------------------------------------------------------- sampling parameters

RULES = {
    "temperature": "must be >= 0 (0 means greedy)",
    "top_k": "must be an integer >= 1",
    "top_p": "must be in (0, 1]",
    "min_p": "must be in [0, 1)",
}
_IN_RANGE = {  # elementwise, so a per-row array of values is checked too
    "temperature": lambda x: np.isfinite(x) & (x >= 0),
    "top_p": lambda x: (x > 0) & (x <= 1),
    "min_p": lambda x: (x >= 0) & (x < 1),
}


def check_value(name: str, value: Any, per_row: bool = False) -> None:
    """Raise RequestError unless `value` is allowed for the sampling parameter `name`: a number
    (top_k: an integer), or with `per_row`, for temperature, top_p and min_p, an array of
    per-row numbers. None turns a filter off; temperature has no off."""
    optional = name != "temperature"
    if value is None and optional:
        return
    if name == "top_k":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
    elif isinstance(value, bool | str | bytes) or value is None:
        ok = False
    elif not (per_row or isinstance(value, numbers.Real)):
        ok = False
    else:
        try:
            ok = bool(np.all(_IN_RANGE[name](np.asarray(value, np.float64))))
        except (TypeError, ValueError):  # not numbers
            ok = False
    if not ok:
        raise _bad(name, value, RULES[name], optional)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How each next token is drawn: logits / temperature, then the top-k, top-p (nucleus) and
    min-p filters in that order (as Hugging Face applies them); None turns a filter off and
    temperature 0 is greedy (argmax, the filters cannot change it). Checked on construction,
    so a SamplingParams that exists is valid; the numbers are stored as Python float/int."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name))
        # plain Python numbers: hashable, a static argument for jit, printed as typed
        as_float = lambda x: None if x is None else float(x)
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_k", None if self.top_k is None else int(self.top_k))
        object.__setattr__(self, "top_p", as_float(self.top_p))
        object.__setattr__(self, "min_p", as_float(self.min_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def filters(self) -> dict[str, float | int]:
        """The filters that are on, by name, in the order they apply."""
        on = {"top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p}
        return {k: v for k, v in on.items() if v is not None}


DEFAULT_SAMPLING = SamplingParams()  # the model's own distribution: temperature 1, no filters
GREEDY = SamplingParams(temperature=0.0)


# ---------------------------------------------------------------- prompts and the budget


def check_prompt(ids: Sequence[int], vocab_size: int, where: str = "prompt") -> None:
    """Raise RequestError unless `ids` is a non-empty list of token ids below vocab_size."""
    if len(ids) == 0:
        raise RequestError(f"{where} is empty: every prompt needs at least one token", where)
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise RequestError(f"{where}: token ids must be in [0, {vocab_size})", where)


def _context(max_seq_len: int | None) -> str:
    return f"the model's context (max_seq_len) of {max_seq_len} tokens"


def _tokens(prompt_len: int, bos: bool) -> str:
    return f"{prompt_len} tokens" + (" with BOS" if bos else "")


def check_fits(prompt_len: int, max_seq_len: int | None, *, prompt: str = "prompt",
               bos: bool = False) -> None:  # fmt: skip
    """Raise RequestError (one line, naming `prompt`) when a prompt that is only read, with
    nothing generated after it (`lm inspect`), is longer than the context."""
    if max_seq_len is not None and prompt_len > max_seq_len:
        why = f"{_tokens(prompt_len, bos)} are more than {_context(max_seq_len)}"
        raise RequestError(f"{prompt}: {why}", prompt)


def new_token_budget(
    prompt_len: int,
    max_seq_len: int | None,
    requested: int | None = None,
    *,
    default: int = DEFAULT_NEW_TOKENS,
    field: str = "max_new_tokens",
    prompt: str = "prompt",
    bos: bool = False,
) -> int:
    """`requested` new tokens, or (None) as many as fit up to `default`: the prompt plus the new
    tokens must fit in the context, max_seq_len (None: no limit, as for a bigram).

    Raises RequestError (one line) naming `prompt` when it alone fills the context, or `field`
    when the budget is not an integer >= 1 or does not fit; `bos` says in the message that the
    prompt's length counts the BOS token the caller put in front."""
    room = math.inf if max_seq_len is None else max_seq_len - prompt_len
    ctx, tokens = _context(max_seq_len), _tokens(prompt_len, bos)
    if room < 1:
        raise RequestError(f"{prompt}: {tokens} leave no room in {ctx}", prompt)
    n = min(default, room) if requested is None else requested
    integer = isinstance(n, numbers.Integral) and not isinstance(n, bool)
    if not integer or n < 1 or n > room:
        rule = "must be an integer >= 1"
        if max_seq_len is not None:
            rule += f", and {prompt} ({tokens}) + new tokens must fit in {ctx}, so at most {room}"
        raise _bad(field, n, rule)
    return int(n)
