"""Prompt template text -> AST.

The parser knows nothing about wildcard files, counting or sampling; those are
separate interpreters of the tree it builds (`expand/`, `wildcards.py`,
`mutate/`). Every failure is a `GrammarError` carrying the origin, line,
column and a caret under the offending text.

Syntax (the README has the full reference):

    {a|b|c}              alternation; options may be empty and may nest
    red/green lambo      slash shorthand for {red|green} lambo (single words)
    {0.7::a|0.3::b}      weights, used by sampling
    {2$$a|b|c}           choose k (ordered, distinct), joined by ","
    {1-2$$ and $$a|b}    choose 1 to 2, joined by " and "
    {@color: red|blue}   an explicitly named factor
    __artists/painters__ a wildcard: one option per line of artists/painters.txt
    \\{ \\} \\| \\/ \\_ \\\\ \\$ \\: \\@   escapes
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_DEPTH = 64
ESCAPABLE = set("{}|/_\\$:@")

_WEIGHT_HEAD = re.compile(r"\s*([-+]?[0-9.][0-9.eE+\-]*)\s*::")
_NAME_HEAD = re.compile(r"\s*@([A-Za-z_][\w\-.]*)\s*: ?")
_AT_HEAD = re.compile(r"\s*@([^:|{}]*)")  # an alternation that starts with '@' names its factor
_K_HEAD = re.compile(r"\s*(\d+)(?:\s*-\s*(\d+))?\s*\$\$")
_WILDCARD = re.compile(r"__([A-Za-z0-9][\w\-./]*?)__")
_WORD = r"\w(?:[\w\-'.]*\w)?"
_SLASH_GROUP = re.compile(rf"(?<![\w\-'./]){_WORD}(?:/{_WORD})+(?![\w\-'/])")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_ESC_SLASH = "\ue000"  # stands in for an escaped "/" while slash groups are found


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
        caret = " " * (self.column - 1) + "^" * min(self.length, max(1, len(self.line_text) - self.column + 1))
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

# ----------------------------------------------------------------------------- parser


def parse(text: str, *, origin: str = "<template>", allow_empty: bool = False, first_line: int = 1) -> Seq:
    """Parse a template. Raises GrammarError (and nothing else) on bad input."""
    if not isinstance(text, str):
        raise GrammarError(f"template must be a string, got {type(text).__name__}")
    if not allow_empty and not text.strip():
        raise GrammarError("empty template: expected some prompt text", Loc(origin, text, 0, first_line))
    parser = _Parser(text, origin, first_line)
    try:
        seq = parser.seq(depth=0)
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps us far from it
        raise GrammarError("template nests too deeply", Loc(origin, text, 0, first_line)) from None
    if parser.i < len(text):  # only a stray "}" or "|" stops the top level
        ch = text[parser.i]
        if ch == "}":
            raise GrammarError("unbalanced '}': no matching '{' before it (write \\} for a literal brace)",
                               parser.loc(parser.i))
        raise GrammarError("'|' outside braces: alternatives go inside {…} (write \\| for a literal bar)",
                           parser.loc(parser.i))
    return seq


class _Parser:
    def __init__(self, text: str, origin: str, first_line: int = 1):
        self.text, self.origin, self.first_line, self.i = text, origin, first_line, 0

    def loc(self, offset: int) -> Loc:
        return Loc(self.origin, self.text, offset, self.first_line)

    def seq(self, depth: int) -> Seq:
        """Parse until '}' or '|' (left for the caller) or the end."""
        parts: list = []
        buf: list[str] = []  # literal characters; escaped "/" held as _ESC_SLASH
        buf_start = self.i
        text = self.text

        def flush() -> None:
            if buf:
                parts.extend(_split_slashes("".join(buf), self.loc(buf_start)))
                buf.clear()

        while self.i < len(text):
            ch = text[self.i]
            if ch == "\\" and self.i + 1 < len(text) and text[self.i + 1] in ESCAPABLE:
                nxt = text[self.i + 1]
                if not buf:
                    buf_start = self.i
                buf.append(_ESC_SLASH if nxt == "/" else nxt)
                self.i += 2
            elif ch in "}|":
                break
            elif ch == "{":
                flush()
                parts.append(self.alternation(depth + 1))
                buf_start = self.i
            elif ch == "_" and text.startswith("__", self.i) and (m := _WILDCARD.match(text, self.i)):
                flush()
                parts.append(Wildcard(m.group(1), loc=self.loc(self.i)))
                self.i = m.end()
                buf_start = self.i
            else:
                if not buf:
                    buf_start = self.i
                buf.append(ch)
                self.i += 1
        flush()
        return Seq(tuple(_merge_texts(parts)))

    def alternation(self, depth: int) -> Alt | Wildcard:
        open_at = self.i
        if depth > MAX_DEPTH:
            raise GrammarError(f"braces nest deeper than {MAX_DEPTH} levels", self.loc(open_at))
        self.i += 1
        text = self.text
        name = None
        if m := _NAME_HEAD.match(text, self.i):
            name = m.group(1)
            self.i = m.end()
        elif m := _AT_HEAD.match(text, self.i):
            raise GrammarError(f"bad factor name '@{m.group(1).rstrip()}': expected {{@name: a|b}} with a name of "
                               "letters, digits, '_', '-' or '.' starting with a letter or '_', then ':' "
                               "(write \\@ for a literal '@')", self.loc(m.start(1) - 1),
                               length=max(1, len(m.group(1).rstrip()) + 1))
        k = joiner = None
        if m := _K_HEAD.match(text, self.i):
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise GrammarError(f"bad choose-k range {lo}-{hi}: the upper bound must be >= the lower",
                                   self.loc(m.start(1)), length=m.end() - m.start(1))
            k, k_at = (lo, hi), m.start(1)
            self.i = m.end()
            end = text.find("$$", self.i)
            stops = [p for p in (text.find(c, self.i) for c in "|}{\\") if p >= 0]
            if end >= 0 and (not stops or end < min(stops)):
                joiner = text[self.i:end]
                self.i = end + 2
        options: list[Option] = []
        while True:
            weight = None
            if m := _WEIGHT_HEAD.match(text, self.i):
                raw = m.group(1)
                try:
                    weight = float(raw)
                except ValueError:
                    weight = float("nan")
                if not (weight >= 0 and weight != float("inf")):
                    raise GrammarError(f"bad weight '{raw}': expected a finite number >= 0 before '::'",
                                       self.loc(m.start(1)), length=len(raw))
                self.i = m.end()
            body = self.seq(depth)
            options.append(Option(body, weight))
            if self.i >= len(text):
                raise GrammarError("unbalanced '{': expected '}' before the end of the template",
                                   self.loc(open_at))
            if text[self.i] == "}":
                self.i += 1
                break
            self.i += 1  # "|"
        if k is not None and k[1] > len(options):
            raise GrammarError(f"choose-k asks for {k[1]} but the alternation has only {len(options)} options",
                               self.loc(k_at))
        weights = [o.weight for o in options if o.weight is not None]
        if weights and sum(weights) == 0 and len(weights) == len(options):
            raise GrammarError("bad weights: all options weigh 0, so none can be sampled", self.loc(open_at))
        # {@name: __wildcard__} names the wildcard itself.
        if (name and k is None and len(options) == 1 and options[0].weight is None
                and len(options[0].body.parts) == 1 and isinstance(options[0].body.parts[0], Wildcard)):
            w = options[0].body.parts[0]
            return Wildcard(w.path, name, loc=w.loc)
        return Alt(tuple(options), name=name, k=k, joiner=joiner, loc=self.loc(open_at))


def _merge_texts(parts: list) -> list:
    out: list = []
    for p in parts:
        if isinstance(p, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].value + p.value, loc=out[-1].loc)
        elif not (isinstance(p, Text) and p.value == ""):
            out.append(p)
    return out


def _split_slashes(raw: str, loc: Loc) -> list:
    """Literal text -> Text and slash-shorthand Alt nodes.

    The rule: a slash group is two or more words joined by single unescaped
    slashes, with no space around them ("red/green/blue"). A word is a run of
    letters, digits, "_", "-", "'" and inner "."; it must contain a letter and
    must not be a number. Groups touching a URL ("://" or "www.") or with an
    empty side ("w/", "a//b") stay literal, so "1/2 cup", "24/7", "f/2.8" and
    "http://x/y" are text. Anything else uses braces.
    """
    if "/" not in raw:
        return [Text(raw.replace(_ESC_SLASH, "/"), loc=loc)]
    out: list = []
    pos = 0
    for m in _SLASH_GROUP.finditer(raw):
        words = m.group(0).split("/")
        token = _token_around(raw, m.start(), m.end())
        if ("://" in token or token.lower().startswith("www.")
                or any(_NUMBER.fullmatch(w) or not re.search(r"[^\W\d_]", w) for w in words)):
            continue
        out.append(Text(raw[pos:m.start()].replace(_ESC_SLASH, "/"), loc=loc))
        at = Loc(loc.origin, loc.text, loc.offset + m.start(), loc.first_line)
        out.append(Alt(tuple(Option(Seq((Text(w),))) for w in words), slash=True, loc=at))
        pos = m.end()
    out.append(Text(raw[pos:].replace(_ESC_SLASH, "/"), loc=loc))
    return [p for p in out if not (isinstance(p, Text) and p.value == "")]


def _token_around(raw: str, start: int, end: int) -> str:
    left = max((raw.rfind(c, 0, start) for c in " \t\n\r"), default=-1) + 1
    rights = [p for p in (raw.find(c, end) for c in " \t\n\r") if p >= 0]
    return raw[left: min(rights) if rights else len(raw)]


# ----------------------------------------------------------------------------- render


def escape_text(value: str, *, option_start: bool = False) -> str:
    """Literal text -> template text that parses back to exactly this text.

    `{ } | / _ \\ $` are always escaped; `@` and `:` only where they would
    read as an option head (a name, choose-k or weight), so A1111 emphasis such
    as `(word:1.2)` stays readable.
    """
    out = re.sub(r"([{}|/_\\$])", r"\\\1", value)
    if option_start:
        for head, char in ((_AT_HEAD, "@"), (_WEIGHT_HEAD, ":")):
            if head.match(out):
                at = out.index(char)
                out = out[:at] + "\\" + out[at:]
    return out


def _render_option(body: "Seq") -> str:
    parts = body.parts
    if parts and isinstance(parts[0], Text):
        return escape_text(parts[0].value, option_start=True) + "".join(render(p) for p in parts[1:])
    return render(body)


def render(node: Node) -> str:
    """AST -> template text; `parse(render(ast)) == ast` for normalised trees."""
    if isinstance(node, Seq):
        return "".join(render(p) for p in node.parts)
    if isinstance(node, Text):
        return escape_text(node.value)
    if isinstance(node, Wildcard):
        return f"{{@{node.name}: __{node.path}__}}" if node.name else f"__{node.path}__"
    if node.slash:
        return "/".join(render(o.body) for o in node.options)
    head = f"@{node.name}: " if node.name else ""
    if node.k is not None:
        lo, hi = node.k
        head += (f"{lo}" if lo == hi else f"{lo}-{hi}") + "$$"
        if node.joiner is not None:
            head += node.joiner + "$$"
    opts = []
    for o in node.options:
        w = f"{o.weight!r}::" if o.weight is not None else ""
        opts.append(w + _render_option(o.body))
    return "{" + head + "|".join(opts) + "}"
