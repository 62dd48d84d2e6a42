"""Clauses of a prompt: splitting, joining and normalising template text, and
reading A1111 emphasis `(clause:weight)`.

A prompt here is template text; a concrete prompt is a template without
choices (`literal` turns one back into its text, `escape_text` goes the other
way).

**Clauses**, precisely (`split_clauses`):

1. The template is parsed; its top-level parts are read in order. An
   alternation or wildcard belongs to the clause it sits in: commas inside
   braces never split.
2. In literal text a comma ends a clause when the depth of A1111 emphasis and
   scheduling brackets is zero. `(` and `[` add one, `)` and `]` take one away
   (never below zero: a stray closer is text); a bracket after a backslash
   (A1111's `\\(`) does not count. So `(red, blue:1.2)` is one clause.
3. Runs of whitespace in literal text become one space; whitespace at the
   start and end of a clause is removed.
4. Empty clauses are dropped. Clauses are joined with ", ".

`a cat,  (red, blue:1.2),,by x` has the clauses `a cat`, `(red, blue:1.2)`,
`by x`. Every mutant is normalised this way, and every mutant is template text
that parses (literal text is escaped with `escape_text`), so it compiles
wherever its parent does.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..grammar import Seq, Text, parse, render

_WS = re.compile(r"\s+")
_EMPHASIS = re.compile(r"\((.*):\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)", re.S)


def _clause_parts(tree: Seq) -> list[tuple]:
    clauses: list[tuple] = []
    current: list = []
    depth = 0

    def close() -> None:
        parts = _normalise(current)
        if parts:
            clauses.append(tuple(parts))
        current.clear()

    for part in tree.parts:
        if not isinstance(part, Text):
            current.append(part)
            continue
        value, buf, i = part.value, [], 0
        while i < len(value):
            ch = value[i]
            if ch == "\\" and i + 1 < len(value) and value[i + 1] in "()[]":
                buf.append(value[i:i + 2])
                i += 2
                continue
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth = max(0, depth - 1)
            elif ch == "," and depth == 0:
                current.append(Text("".join(buf)))
                buf = []
                close()
                i += 1
                continue
            buf.append(ch)
            i += 1
        if buf:
            current.append(Text("".join(buf)))
    close()
    return clauses


def _normalise(parts: list) -> list:
    out: list = []
    for p in parts:
        if isinstance(p, Text):
            value = _WS.sub(" ", p.value)
            if out and isinstance(out[-1], Text):
                out[-1] = Text(_WS.sub(" ", out[-1].value + value))
            else:
                out.append(Text(value))
        else:
            out.append(p)
    if out and isinstance(out[0], Text):
        out[0] = Text(out[0].value.lstrip())
    if out and isinstance(out[-1], Text):
        out[-1] = Text(out[-1].value.rstrip())
    return [p for p in out if not (isinstance(p, Text) and not p.value)]


def split_clauses(prompt: str) -> list[str]:
    """Template text -> its clauses, each as template text (rules in the module doc)."""
    return [render(Seq(parts)) for parts in _clause_parts(parse(prompt, allow_empty=True))]


def join_clauses(clauses: Iterable[str]) -> str:
    return ", ".join(clauses)


def normalise(prompt: str) -> str:
    """The prompt as its clauses joined by ", " (what every mutant looks like)."""
    return join_clauses(split_clauses(prompt))


def literal(prompt: str) -> str:
    """The concrete text of a template without choices; ValueError if it has any."""
    tree = parse(prompt, allow_empty=True)
    if any(not isinstance(p, Text) for p in tree.parts):
        raise ValueError(f"prompt {prompt!r} has alternations or wildcards; expand it to concrete prompts first")
    return "".join(p.value for p in tree.parts)


def emphasis(clause: str) -> tuple[str, float] | None:
    """(inner, weight) when the clause is exactly A1111 emphasis `(inner:weight)`."""
    m = _EMPHASIS.fullmatch(clause)
    if not m:
        return None
    depth = 0
    inner = m.group(1)
    for i, ch in enumerate(inner):
        if ch in "([" and not (i and inner[i - 1] == "\\"):
            depth += 1
        elif ch in ")]" and not (i and inner[i - 1] == "\\"):
            depth -= 1
            if depth < 0:
                return None
    return (inner, float(m.group(2))) if depth == 0 else None
