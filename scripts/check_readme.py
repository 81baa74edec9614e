#!/usr/bin/env python
"""Runs every snippet of README.md as written, in order, from the repository root.

```python blocks run in the venv's Python; ```sh blocks run line by line in one bash per
block (`set -e`), with the venv's bin/ first on PATH as after `. .venv/bin/activate`.
```text blocks are not run; any other fence is an error, so no snippet escapes.

  python scripts/check_readme.py          # all of it, as written: on a fresh clone this is
                                          # a new user's first hour (make train, make test, ...)
  python scripts/check_readme.py --quick  # CI: training and benchmarks shortened, set-up
                                          # lines and `make test` left to CI's own steps
  python scripts/check_readme.py --short  # shortened runs, set-up lines as written
  python scripts/check_readme.py --list   # the snippets and what --quick runs for each line
  python scripts/check_readme.py --only 2 # one snippet, numbered as --list shows them

Exits with status 1 at the first snippet that fails, naming it.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK_TRAIN = "--limit-train 1000 --limit-test 500 --epochs 1"
QUICK_BENCH = "--shapes 8,20,4,8 --repeats 2 --warmup 0"
RUNNABLE = ("python", "sh")


@dataclass
class Snippet:
    lang: str
    line: int      # README line of the opening fence
    heading: str   # the section it sits in
    code: str


def snippets(text: str) -> list[Snippet]:
    found, heading, fence = [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.startswith("```"):
                fence, body = Snippet(line[3:].strip(), number, heading, ""), []
        elif line.startswith("```"):
            fence.code = "\n".join(body) + "\n"
            found.append(fence)
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ValueError(f"README.md:{fence.line}: unclosed code fence")
    return found


def quick_line(line: str, skip_setup: bool = True) -> str | None:
    """What --quick (skip_setup) or --short runs for one shell line (None: skip it)."""
    command = line.split("#", 1)[0].strip()
    if not command:
        return None
    words = shlex.split(command)
    while words and "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]  # VAR=value before the command
    setup = words[:2] == ["make", "test"] or "pip" in words[:3] or words[1:3] == ["-m", "venv"]
    if setup and skip_setup:
        return None  # CI sets up and runs the suite itself
    if words[:2] == ["make", "train"]:
        return f'{command} TRAIN_ARGS="{QUICK_TRAIN}"'
    if words[:2] == ["make", "bench"]:
        return f'{command} BENCH_ARGS="{QUICK_BENCH}"'
    if words[:2] == ["python", "scripts/train.py"]:
        return f"{command} {QUICK_TRAIN}"
    if words[:2] == ["python", "scripts/benchmark.py"] and "--no-save" not in words:
        return f"{command} {QUICK_BENCH}"  # (argparse takes the last --shapes, --repeats)
    return command


def shell_script(code: str, quick: bool, short: bool = False) -> str:
    """One bash script for a block: each command echoed, run and timed."""
    lines = [line.split("#", 1)[0].strip() for line in code.splitlines()]
    if quick or short:
        lines = [quick_line(line, skip_setup=quick) for line in lines]
    out = ["set -eo pipefail"]
    for line in filter(None, lines):
        shown = shlex.quote(f"$ {line}")
        out.append(f'echo {shown}; _t=$SECONDS; {line}; echo "== $((SECONDS - _t)) s" {shown}')
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="for CI: shortened runs; set-up lines and `make test` skipped")
    ap.add_argument("--short", action="store_true",
                    help="shortened runs, set-up lines as written (a fresh clone's set-up)")
    ap.add_argument("--list", action="store_true", help="print the snippets; run nothing")
    ap.add_argument("--only", type=lambda v: {int(k) for k in v.split(",")}, metavar="K,...",
                    help="run only these snippets (numbered as --list shows them)")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)
    found = snippets(args.readme.read_text())
    bad = [s for s in found if s.lang not in RUNNABLE + ("text",)]
    if bad:
        print("\n".join(f"README.md:{s.line}: fence {s.lang!r} is neither python, sh nor text"
                        for s in bad), file=sys.stderr)
        return 1
    venv_bin = ROOT / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
           "VIRTUAL_ENV": str(ROOT / ".venv")}
    env.pop("PYTHONHOME", None)
    todo = [s for s in found if s.lang in RUNNABLE]
    for k, s in enumerate(todo, 1):
        if args.only and k not in args.only:
            continue
        where = f"[{k}/{len(todo)}] README.md:{s.line} ({s.heading}), {s.lang}"
        if s.lang == "python":
            cmd, shown = [str(venv_bin / "python"), "-c", s.code], s.code
        else:
            shown = shell_script(s.code, args.quick, args.short)
            cmd = ["bash", "-c", shown]
        print(f"== {where}\n{shown.rstrip()}", flush=True)
        if args.list:
            continue
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env)
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"FAILED {where}: status {proc.returncode} after {took:.0f} s", file=sys.stderr)
            return 1
        print(f"== ok in {took:.0f} s", flush=True)
    if not args.list:
        ran = len(args.only) if args.only else f"all {len(todo)}"
        mode = " (--quick)" if args.quick else " (--short)" if args.short else ""
        print(f"{ran} README snippets ran{mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
