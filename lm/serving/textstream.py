"""Text released while tokens arrive, and the plain chat template for base models.

No jax and no web framework here: `lm serve` and `lm chat` share this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# The plain chat template. Our models are base models: they have never seen a chat format,
# so the template is ordinary text a base model can continue, with the roles written out.
ROLE_NAMES = {"system": None, "developer": None, "user": "User", "assistant": "Assistant"}
CHAT_STOP = "\nUser:"  # a base model goes on to write the user's next turn; stop there


def chat_prompt(messages: Iterable[dict]) -> str:
    """Messages as text: system (or developer) text first, then "User: ..." and
    "Assistant: ..." turns, separated by blank lines, ending with "Assistant:" for the model to
    continue (the leading space of its answer is dropped). For example:

        You are terse.

        User: Hi

        Assistant: Hello.

        User: And you?

        Assistant:
    """
    parts = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role not in ROLE_NAMES:
            raise ValueError(f"role {role!r}: expected one of {', '.join(ROLE_NAMES)}")
        name = ROLE_NAMES[role]
        parts.append(content if name is None else f"{name}: {content}")
    parts.append("Assistant:")
    return "\n\n".join(parts)


class TextStream:
    """The text of a growing list of token ids, released only when it is final.

    `push(ids)` returns (new text, stopped). Held back: a trailing U+FFFD (a character whose
    bytes have not all arrived) and any end of the text that could be the start of a stop
    string. At the first stop string the text ends before it and `stopped` is True. With
    `lstrip`, leading whitespace is dropped (the space after "Assistant:"). `close()`
    releases what was held back when generation ends without a stop string.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Iterable[str] = (),
                 lstrip: bool = False):  # fmt: skip
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.lstrip = lstrip
        self.ids: list[int] = []
        self.shown = ""
        self.stopped = False

    def _text(self) -> str:
        text = self.decode(self.ids)
        return text.lstrip() if self.lstrip else text

    def _release(self, upto: str) -> str:
        if len(upto) <= len(self.shown):
            return ""
        new = upto[len(self.shown) :]
        self.shown = upto
        return new

    def push(self, ids: list[int]) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        self.ids.extend(ids)
        text = self._text()
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(text[: min(hits)]), True
        end = keep = len(text.rstrip("\ufffd"))
        for s in self.stops:  # hold the longest tail that a stop string starts with
            for n in range(min(len(s) - 1, end), 0, -1):
                if text[end - n : end] == s[:n]:
                    keep = min(keep, end - n)
                    break
        return self._release(text[:keep]), False

    def close(self) -> str:
        """The rest of the text, when generation ended (EOS or the budget)."""
        if self.stopped:
            return ""
        return self._release(self._text())
