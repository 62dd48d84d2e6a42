"""A1111 emphasis in a concrete prompt: `(text)` weighs 1.1, `(text:1.3)` weighs 1.3, `[text]` weighs
1/1.1, nesting multiplies, `\\(` `\\)` `\\[` `\\]` `\\\\` are the characters themselves (a backslash
before any character is dropped and the character kept, as A1111 reads it).

The parser turns a prompt into runs of text with their weights (:func:`parse`) and the text a reader
sees (:func:`plain`: what CLIP metrics score the image against). Prompt editing (`[a:b:0.5]`) and
alternation (`[a|b]`) switch prompts between steps; they are refused rather than read as text.
No torch here: :mod:`harness.weighted` turns runs into text-encoder embeddings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UP = 1.1  # the weight of `(text)`; `[text]` is 1 / UP
MODES = ("a1111", "literal")  # the experiment's `emphasis`: read as weights, or fed to the model as text
_SPECIAL = "()[]"
WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")  # `:N` before a `)`; search up to it


class EmphasisError(ValueError):
    """A prompt whose brackets do not read as emphasis; `column` (1-based) points at the culprit."""

    def __init__(self, prompt: str, column: int, message: str):
        self.prompt, self.column = prompt, column
        super().__init__(f"column {column}: {message}")


def has_emphasis(prompt: str) -> bool:
    """Whether the prompt holds an unescaped bracket (its weights differ from 1 or it has `\\(` escapes to
    read), i.e. whether reading it as emphasis can give other embeddings than the text itself."""
    return any(c in _SPECIAL or c == "\\" for c in prompt)


def parse(prompt: str) -> list[tuple[str, float]]:
    """Runs of (text, weight), neighbours of equal weight joined; raises EmphasisError at the column of an
    unmatched bracket or of prompt editing / alternation inside `[...]`.

    As A1111 reads them: a backslash before any other character is dropped (`\\:` is a colon that
    schedules nothing); a weight is the `:N` written right before its own `)`, never text from a bracket
    inside it (`(a:(1.5))` is `a:` at 1.1 and `1.5` at 1.21); a `:` or `|` inside brackets nested in
    `[...]` is theirs (`[(a:b)]` is emphasis, not prompt editing)."""
    chars: list[str] = []
    weights: list[float] = []
    open_: list[_Open] = []
    i = 0
    while i < len(prompt):
        c = prompt[i]
        if c == "\\":
            if i + 1 < len(prompt):
                chars.append(prompt[i + 1])
                weights.append(1.0)
            i += 2
            continue
        if c in "([":
            open_.append(_Open(c, i, len(chars)))
        elif c in ")]":
            want = "(" if c == ")" else "["
            if not open_ or open_[-1].bracket != want:
                raise EmphasisError(prompt, i + 1, f"{c!r} closes no {want!r}; write \\{c} for the character")
            bracket = open_.pop()
            factor = _close(prompt, i, bracket, chars)
            del weights[len(chars):]  # an `:N` weight is not text
            for k in range(bracket.start, len(weights)):
                weights[k] *= factor
        else:
            chars.append(c)
            weights.append(1.0)
            if c in ":|" and open_:
                open_[-1].switches = True
        i += 1
    if open_:
        bracket, column = open_[-1].bracket, open_[-1].at + 1
        closer = ")" if bracket == "(" else "]"
        raise EmphasisError(prompt, column, f"{bracket!r} is never closed by {closer!r}; close it or write "
                                            f"\\{bracket} for the character")
    runs: list[tuple[str, float]] = []
    for ch, w in zip(chars, weights):
        if runs and runs[-1][1] == w:
            runs[-1] = (runs[-1][0] + ch, w)
        else:
            runs.append((ch, w))
    return runs


@dataclass
class _Open:
    """An open bracket: which, its index in the prompt, the index of its first character in the text, and
    whether a `:` or `|` stands at its own level."""

    bracket: str
    at: int
    start: int
    switches: bool = False


def _close(prompt: str, end: int, bracket: _Open, chars: list[str]) -> float:
    """The weight the bracket closing at `end` gives its text; takes an `:N` weight off `chars`."""
    if bracket.bracket == "[":
        if bracket.switches:
            raise EmphasisError(prompt, bracket.at + 1, "prompt editing ([a:b:when]) and alternation ([a|b]) "
                                                       "switch prompts between steps, which this runner does "
                                                       "not do; write \\[ \\] for the characters")
        return 1 / UP
    m = WEIGHT.search(prompt, bracket.at + 1, end)
    if m is None:
        return UP
    del chars[len(chars) - len(m.group(0)):]
    return float(m.group(1))


def plain(prompt: str) -> str:
    """The prompt as the model read it: brackets and weights dropped, escapes read, and a space where two
    runs of different weight meet inside a word (`a (red)circle` is `a red circle`) or a run of marks, since
    each run is tokenized on its own (:func:`harness.weighted.weighted_embeddings`): a metric that reads
    this text reads the tokens the model saw, not `redcircle`."""
    out = ""
    for text, _ in parse(prompt):
        if out and text and _glued(out[-1], text[0]):
            out += " "
        out += text
    return out


def _glued(left: str, right: str) -> bool:
    """Whether a tokenizer would read `left` and `right` as one piece if nothing stood between them:
    two word characters, or two marks (neither a word character nor a space)."""
    if left.isspace() or right.isspace():
        return False
    return (left.isalnum() or left == "_") == (right.isalnum() or right == "_")
