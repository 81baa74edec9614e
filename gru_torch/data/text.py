"""Tokenizing review text the way torchtext's "basic_english" tokenizer did."""
from __future__ import annotations

import re

# Applied in order, as torchtext did: quotes, punctuation split off, <br /> removed.
_RULES = [(re.compile(p), r) for p, r in [
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "),
    (r"\(", " ( "), (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "),
    (r"\:", " "), (r"\s+", " "),
]]


def tokenize(text: str) -> list[str]:
    """Lowercases, removes <br />, splits punctuation off, and splits on whitespace."""
    line = text.lower()
    for pattern, replacement in _RULES:
        line = pattern.sub(replacement, line)
    return line.split()
