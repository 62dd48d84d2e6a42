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
import unicodedata
from typing import Iterable

from ..emphasis import UP, WEIGHT
from ..grammar import Seq, Text, escape_text, joins_letter_before, parse, render

_WS = re.compile(r"\s+")


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
            if ch == "\\" and i + 1 < len(value) and value[i + 1] in "()[]\\":  # A1111's escapes: \\( and \\\\
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
    """Template text -> its clauses, each as template text (rules in the module doc). A clause must read as a
    template alone (operators move and drop clauses): one that starts with a combining mark is a ValueError."""
    clauses = [render(Seq(parts)) for parts in _clause_parts(parse(prompt, allow_empty=True))]
    for number, clause in enumerate(clauses, 1):
        if joins_letter_before(clause[0]):
            raise ValueError(f"clause {number} of {prompt!r}, {clause!r}, starts with U+{ord(clause[0]):04X} "
                             f"({unicodedata.name(clause[0], 'unnamed')}), which joins the letter before it; each "
                             "clause must read alone, as operators move and drop clauses: write the accented "
                             "letter whole, or drop the mark")
    return clauses


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
    """(inner, weight) when the whole clause (template text) is A1111 emphasis around `inner`: `(inner:1.3)`,
    `(inner)`, `[inner]` or brackets of these nested (`((inner))` weighs 1.21, `[(inner:1.2)]` 1.2/1.1).
    A clause of plain text is read as the runner reads it, its template escapes undone (`(\\(cat)` is `(cat`
    at 1.1), and `inner` is given back as template text."""
    tree = parse(clause, allow_empty=True)
    if len(tree.parts) == 1 and isinstance(tree.parts[0], Text):
        value = tree.parts[0].value
        span = emphasis_span(value)
        return None if span is None else (escape_text(value[span[0]:span[1]]), span[2])
    masked = _braces_masked(clause)
    if _WEIGHT_BY_CHOICE.search(masked):
        return None
    span = emphasis_span(masked)
    return None if span is None else (clause[span[0]:span[1]], span[2])


_MASK = "\0"  # stands in for the characters of a template alternation while A1111 brackets are read
_WEIGHT_BY_CHOICE = re.compile(r":[\s\0]*\0[\s\0]*\)")  # `(x:{0.8|1.5})`: the weight is the alternation's


def weight_by_choice(clause: str) -> bool:
    """Whether an emphasis weight in `clause` (template text) is written by an alternation, `(x:{0.8|1.5})`:
    the weight the runner reads then depends on the prompt, and the clause has no one weight to move."""
    return bool(_WEIGHT_BY_CHOICE.search(_braces_masked(clause)))


def _braces_masked(clause: str) -> str:
    """`clause` (template text) of the same length with each alternation, its braces included, written as
    `_MASK`s: a `|` or `:` there is the template's, not A1111 scheduling (`[{red|blue} car]` is emphasis)."""
    if "{" not in clause:
        return clause
    out, depth, i = [], 0, 0
    while i < len(clause):
        ch = clause[i]
        if ch == "\\" and i + 1 < len(clause):
            out.append(clause[i:i + 2] if not depth else _MASK * 2)
            i += 2
            continue
        depth += ch == "{"
        out.append(_MASK if depth else ch)
        depth -= ch == "}" and depth > 0
        i += 1
    return "".join(out)


def emphasis_span(clause: str) -> tuple[int, int, float] | None:
    """(start, end, weight) of the text inside the emphasis brackets the whole clause is wrapped in (as
    :func:`emphasis`); None when it is not wrapped. `[a:b:0.5]` is prompt editing, not emphasis."""
    start, end, weight = 0, len(clause), 1.0
    while end - start >= 2 and clause[start] in "([" and _closer(clause, start, end) == end - 1:
        inner_start, inner_end = start + 1, end - 1
        if clause[start] == "(":
            m = WEIGHT.search(clause, inner_start, inner_end)
            weight *= UP if m is None else float(m.group(1))
            inner_end = inner_end if m is None else m.start()
        elif _at_top_level(clause, inner_start, inner_end, ":|"):
            break
        else:
            weight /= UP
        start, end = inner_start, inner_end
    return (start, end, weight) if start else None


def _brackets(text: str, start: int, end: int):
    """(index, bracket, depth after it) of the unescaped A1111 brackets in `text[start:end]`."""
    depth, i = 0, start
    while i < end:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "([)]":
            depth += 1 if ch in "([" else -1
            yield i, ch, depth
        i += 1


def _closer(text: str, start: int, end: int) -> int | None:
    """The index of the bracket that closes `text[start]`, None if none before `end` or a mismatched one."""
    want: list[str] = []
    for i, ch, _ in _brackets(text, start, end):
        if ch in "([":
            want.append(")" if ch == "(" else "]")
        elif not want or want.pop() != ch:
            return None
        elif not want:
            return i
    return None


def _at_top_level(text: str, start: int, end: int, chars: str) -> bool:
    """Whether one of `chars` stands in `text[start:end]` outside every bracket there."""
    depth, last = 0, start
    for i, _, after in _brackets(text, start, end):
        if depth == 0 and any(c in text[last:i] for c in chars):
            return True
        depth, last = after, i + 1
    return depth == 0 and any(c in text[last:end] for c in chars)
