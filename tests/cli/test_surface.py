"""Every `lm` command and flag that existed stays: the parser's surface against the list
recorded from it (tests/cli/cli_surface.json, written before the package was reorganized).
New commands and flags may be added; none may disappear."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lm.cli import build_parser

RECORDED = Path(__file__).with_name("cli_surface.json")


def surface(p: argparse.ArgumentParser, path=("lm",), out=None) -> dict:
    """{command path: {"flags": [...], "positionals": [...]}} for the parser and its subcommands."""
    out = {} if out is None else out
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    out[" ".join(path)] = {
        "flags": sorted(o for a in p._actions for o in a.option_strings),
        "positionals": [a.dest for a in p._actions if not a.option_strings and a not in subs],
    }
    for a in subs:
        for name, sp in a.choices.items():
            surface(sp, (*path, name), out)
    return out


def missing(recorded: dict, now: dict) -> list[str]:
    out = []
    for cmd, want in recorded.items():
        if cmd not in now:
            out.append(f"command {cmd!r} is gone")
            continue
        out += [f"{cmd} {f}: gone" for f in want["flags"] if f not in now[cmd]["flags"]]
        if want["positionals"] != now[cmd]["positionals"]:
            out.append(f"{cmd}: positionals {want['positionals']} -> {now[cmd]['positionals']}")
    return out


def test_every_recorded_command_and_flag_is_still_there():
    recorded = json.loads(RECORDED.read_text())
    assert len(recorded) == 21 and sum(len(v["flags"]) for v in recorded.values()) == 141
    assert missing(recorded, surface(build_parser())) == []


def test_the_check_sees_a_lost_flag_and_command():
    recorded = json.loads(RECORDED.read_text())
    now = surface(build_parser())
    now["lm train"]["flags"].remove("--restart")
    del now["lm chat"]
    assert sorted(missing(recorded, now)) == [
        "command 'lm chat' is gone",
        "lm train --restart: gone",
    ]


def test_building_the_parser_imports_no_jax():
    """`lm --help` and a bad argument answer without paying for JAX."""
    code = (
        "import sys; from lm.cli import build_parser; build_parser(); print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
