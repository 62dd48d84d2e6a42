"""A1111 emphasis in a concrete prompt: `(text)` weighs 1.1, `(text:1.3)` weighs 1.3, `[text]` weighs
1/1.1, nesting multiplies, `\\(` `\\)` `\\[` `\\]` `\\\\` are the characters themselves.

The parser turns a prompt into runs of text with their weights (:func:`parse`) and the text a reader
sees (:func:`plain`: what CLIP metrics score the image against). Prompt editing (`[a:b:0.5]`) and
alternation (`[a|b]`) switch prompts between steps; they are refused rather than read as text.
No torch here: :mod:`harness.weighted` turns runs into text-encoder embeddings.
"""

from __future__ import annotations

import re

UP = 1.1  # the weight of `(text)`; `[text]` is 1 / UP
MODES = ("a1111", "literal")  # the experiment's `emphasis`: read as weights, or fed to the model as text
_SPECIAL = "()[]"
_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")


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
    unmatched bracket or of prompt editing / alternation inside `[...]`."""
    chars: list[str] = []
    weights: list[float] = []
    open_: list[tuple[str, int, int]] = []  # (bracket, its column, index of its first character in chars)
    i = 0
    while i < len(prompt):
        c = prompt[i]
        if c == "\\" and i + 1 < len(prompt) and prompt[i + 1] in _SPECIAL + "\\":
            chars.append(prompt[i + 1])
            weights.append(1.0)
            i += 2
            continue
        if c in "([":
            open_.append((c, i + 1, len(chars)))
        elif c in ")]":
            want = "(" if c == ")" else "["
            if not open_ or open_[-1][0] != want:
                raise EmphasisError(prompt, i + 1, f"{c!r} closes no {want!r}; write \\{c} for the character")
            _, column, start = open_.pop()
            factor = _close(prompt, c, column, chars, start)
            del weights[len(chars):]  # an `:N` weight is not text
            for k in range(start, len(weights)):
                weights[k] *= factor
        else:
            chars.append(c)
            weights.append(1.0)
        i += 1
    if open_:
        bracket, column, _ = open_[-1]
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


def _close(prompt: str, bracket: str, column: int, chars: list[str], start: int) -> float:
    """The weight a closing bracket gives the text since `start`; takes an `:N` weight off `chars`."""
    text = "".join(chars[start:])
    if bracket == "]":
        if ":" in text or "|" in text:
            raise EmphasisError(prompt, column, "prompt editing ([a:b:when]) and alternation ([a|b]) switch "
                                                "prompts between steps, which this runner does not do; write "
                                                "\\[ \\] for the characters")
        return 1 / UP
    m = _WEIGHT.search(text)
    if m is None:
        return UP
    del chars[start + m.start():]
    return float(m.group(1))


def plain(prompt: str) -> str:
    """The prompt as a reader sees it: brackets and weights dropped, escapes read."""
    return "".join(text for text, _ in parse(prompt))
