"""`lm chat`: a conversation with a model in the terminal, streamed as it is generated.

The conversation goes through the same plain template as the server's chat endpoint
(`lm.serving.textstream.chat_prompt`), and each reply is `sampling.stream_generate` from the whole
conversation so far, stopped at EOS, at the template's next "User:" or at the token budget.
When the conversation no longer fits the context, the oldest turns are dropped (the system
message stays) and a line says so. Lines starting with "/" are commands (`/help`).
Reply k (counting from 0) is drawn with fold_in(PRNGKey(seed), k).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import jax

from lm.inference import sampling
from lm.inference.numpy_runner import decoder
from lm.inference.request import RequestError, SamplingParams, new_token_budget
from lm.serving.textstream import CHAT_STOP, TextStream, chat_prompt

HELP = """commands:
  /temp X       temperature (0 = greedy)        /top_k N|off   keep the N likeliest tokens
  /top_p X|off  nucleus filter                  /min_p X|off   drop tokens below X * top p
  /max N|auto   tokens per reply (auto: fill the context, up to 200)
  /seed N       random seed                     /system TEXT   set the system message
  /history      show the conversation           /settings      show the settings
  /reset        forget the conversation         /quit          leave (also Ctrl-D)"""


SAMPLING = ("temperature", "top_k", "top_p", "min_p")  # the settings a SamplingParams holds


class Session:
    """The conversation, the settings, and the model; `handle(line)` does one input line.

    `settings`: temperature, top_k, top_p, min_p (a valid SamplingParams), max_new (None:
    auto) and seed."""

    def __init__(self, cfg, tok, params, settings: dict[str, Any], out: TextIO, system=None):
        self.cfg, self.tok, self.params, self.out = cfg, tok, params, out
        self.settings = settings
        self.sampling()  # checks the sampling settings
        self.system = system
        self.history: list[dict[str, str]] = []
        self.replies = 0

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    # ------------------------------------------------------------ commands

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        s = self.settings
        try:
            if name in ("quit", "exit", "q"):
                return False
            if name == "help":
                self.say(HELP)
            elif name in ("temp", "temperature"):
                self._set_sampling("temperature", float(arg))
            elif name in ("top_k", "topk"):
                self._set_sampling("top_k", None if arg == "off" else int(arg))
            elif name in ("top_p", "topp"):
                self._set_sampling("top_p", None if arg == "off" else float(arg))
            elif name in ("min_p", "minp"):
                self._set_sampling("min_p", None if arg == "off" else float(arg))
            elif name == "max":
                s["max_new"] = None if arg == "auto" else _int_at_least(arg, 1)
            elif name == "seed":
                s["seed"] = int(arg)
            elif name == "system":
                self.system = arg or None
            elif name == "reset":
                self.history, self.replies = [], 0
                self.say("(conversation cleared)")
                return True
            elif name == "history":
                for m in self._messages():
                    self.say(f"{m['role']}: {m['content']}")
                return True
            elif name == "settings":
                pass
            else:
                self.say(f"unknown command /{name}; /help lists them")
                return True
        except RequestError as e:  # a sampling value out of range: the rule it breaks
            self.say(f"/{name}: {e.rule}")
            return True
        except ValueError as e:
            why = str(e) if "must" in str(e) else f"{arg!r} is not a valid value"
            self.say(f"/{name}: {why}")
            return True
        self.say("(" + ", ".join(f"{k}={v}" for k, v in self.settings.items())
                 + (f", system={self.system!r}" if self.system else "") + ")")  # fmt: skip
        return True

    def sampling(self) -> SamplingParams:
        return SamplingParams(**{k: self.settings[k] for k in SAMPLING})

    def _set_sampling(self, name: str, value) -> None:
        """Change one sampling setting, if SamplingParams accepts the result."""
        SamplingParams(**{**{k: self.settings[k] for k in SAMPLING}, name: value})
        self.settings[name] = value

    # ------------------------------------------------------------ a reply

    def _messages(self, extra: list[dict] = ()) -> list[dict]:
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msg + self.history + list(extra)

    def _fit(self, user: dict) -> tuple[list[int], int] | None:
        """The prompt ids and the token budget, dropping the oldest turns until it fits."""
        S = self.cfg.model.max_seq_len
        dropped = 0
        while True:
            ids = [self.tok.bos_id, *self.tok.encode(chat_prompt(self._messages([user])))]
            try:
                n = new_token_budget(len(ids), S, None)
                if self.settings["max_new"] is not None:
                    n = new_token_budget(len(ids), S, self.settings["max_new"])
                break
            except RequestError:
                if not self.history:
                    self.say(f"(this message is {len(ids)} tokens with the template; the "
                             f"model's context is {S}: shorten it or /max less)")  # fmt: skip
                    return None
                self.history = self.history[2:]  # one user turn and its reply
                dropped += 1
        if dropped:
            self.say(f"(dropped the oldest {dropped} turn(s) to fit the {S}-token context)")
        return ids, n

    def reply(self, text: str) -> None:
        user = {"role": "user", "content": text}
        try:
            fitted = self._fit(user)
        except ValueError as e:  # text the tokenizer cannot encode
            self.say(f"(cannot encode that: {e})")
            return
        if fitted is None:
            return
        ids, n = fitted
        s = self.settings
        key = jax.random.fold_in(jax.random.PRNGKey(s["seed"]), self.replies)
        stream = TextStream(decoder(self.tok), [CHAT_STOP], lstrip=True)
        eos = self.tok.eos_id
        self.say("assistant> ", end="")
        chunks = sampling.stream_generate(self.params, self.cfg.model, [ids], key, n,
                                          self.sampling(), eos_id=eos, pad_id=self.tok.pad_id,
                                          chunk_size=4)  # fmt: skip
        answer = ""
        try:
            for rows in chunks:
                new, stopped = stream.push([t for t in rows[0] if t != eos])
                answer += new
                self.say(new, end="")
                if stopped:
                    break
            else:
                rest = stream.close()
                answer += rest
                self.say(rest, end="")
        except KeyboardInterrupt:
            self.say(" (interrupted)", end="")
        finally:
            chunks.close()
        self.say()
        self.history += [user, {"role": "assistant", "content": answer.rstrip()}]
        self.replies += 1

    def handle(self, line: str) -> bool:
        line = line.rstrip("\n")
        if not line.strip():
            return True
        if line.startswith("/"):
            return self.command(line)
        self.reply(line)
        return True


def _int_at_least(arg: str, lo: int) -> int:
    v = int(arg)
    if v < lo:
        raise ValueError(f"must be >= {lo}")
    return v


def run(session: Session, stdin: TextIO = sys.stdin) -> int:
    """Read lines until EOF or /quit. With a terminal, a prompt and line editing (readline)."""
    interactive = stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (input() then has editing and history)
        except ImportError:
            pass
    session.say(f"chatting with {session.cfg.model.n_layers}-layer model; /help lists commands, "
                "Ctrl-D leaves")  # fmt: skip
    while True:
        try:
            if interactive and stdin is sys.stdin:
                line = input("you> ") + "\n"  # an empty line is not the end
            else:
                line = stdin.readline()
                if not line:
                    break
        except EOFError:
            break
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, not an exit
            session.say()
            continue
        if not session.handle(line):
            break
    if interactive:
        session.say()
    return 0
