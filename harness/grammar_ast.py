"""The template AST and its errors: `Loc` (where a node came from), `GrammarError` (origin, line,
column, the line and a caret), and the nodes `Text`, `Option`, `Alt`, `Wildcard`, `Seq`, frozen and
compared by content (locations are ignored)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    """Where a node came from, for error messages. Ignored by equality."""

    origin: str
    text: str
    offset: int
    first_line: int = 1


class GrammarError(ValueError):
    """A template problem, located: origin:line:col, message, the line and a caret."""

    def __init__(self, message: str, loc: Loc | None = None, *, length: int = 1):
        self.message = message
        self.origin = loc.origin if loc else "<template>"
        if loc is not None:
            before = loc.text[: loc.offset]
            self.line = before.count("\n") + loc.first_line
            self.column = loc.offset - (before.rfind("\n") + 1) + 1
            start = before.rfind("\n") + 1
            end = loc.text.find("\n", loc.offset)
            self.line_text = loc.text[start: end if end >= 0 else len(loc.text)]
        else:
            self.line, self.column, self.line_text = 1, 1, ""
        self.length = max(1, length)
        self.also: tuple[GrammarError, ...] = ()  # further problems found in the same pass
        super().__init__(str(self))

    def with_also(self, others) -> "GrammarError":
        """This error, reporting `others` after itself (one message for every problem of a template)."""
        self.also = tuple(others)
        self.args = (str(self),)
        return self

    def _one(self) -> str:
        head = f"{self.origin}:{self.line}:{self.column}: {self.message}"
        if not self.line_text and self.column == 1:
            return head
        pad = "".join(c if c == "\t" else " " for c in self.line_text[: self.column - 1])  # tabs line up
        caret = pad + "^" * min(self.length, max(1, len(self.line_text) - self.column + 1))
        return f"{head}\n  {self.line_text}\n  {caret}"

    def __str__(self) -> str:
        return "\n".join(e._one() for e in (self, *self.also))


# ----------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Text:
    value: str
    loc: Loc | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Option:
    body: "Seq"
    weight: float | None = None


@dataclass(frozen=True)
class Alt:
    """An alternation: one factor. `k` = (lo, hi) for choose-k, else None."""

    options: tuple[Option, ...]
    name: str | None = None
    k: tuple[int, int] | None = None
    joiner: str | None = None
    slash: bool = False
    wildcard: str | None = None  # set when resolved from a wildcard file
    loc: Loc | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Wildcard:
    path: str
    name: str | None = None
    loc: Loc | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Seq:
    parts: tuple["Text | Alt | Wildcard", ...] = ()


Node = Text | Alt | Wildcard | Seq
