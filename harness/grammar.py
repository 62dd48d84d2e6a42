"""Prompt template text -> AST.

The parser knows nothing about wildcard files, counting or sampling; those are
separate interpreters of the tree it builds (`expand/`, `wildcards.py`,
`mutate/`). The nodes and `GrammarError` live in `grammar_ast`, the slash
shorthand in `slash`; both are importable from here. Every failure is a `GrammarError` carrying the origin, line,
column and a caret under the offending text.

Syntax (the README has the full reference):

    {a|b|c}              alternation; options may be empty and may nest
    red/green lambo      slash shorthand for {red|green} lambo (single words)
    {0.7::a|0.3::b}      weights, used by sampling
    {2$$a|b|c}           choose k (ordered, distinct), joined by ","
    {1-2$$ and $$a|b}    choose 1 to 2, joined by " and " (a separator runs to the next $$, no braces)
    {2$$__colours__}     choose 2 of a wildcard's lines
    {@color: red|blue}   an explicitly named factor; {@pair: 2$$a|b|c}: the name comes first
    __artists/painters__ a wildcard: one option per line of artists/painters.txt
    \\{ \\} \\| \\/ \\_ \\\\ \\$ \\: \\@   escapes
"""

from __future__ import annotations

import re
import unicodedata

from .grammar_ast import Alt, GrammarError, Loc, Node, Option, Seq, Text, Wildcard  # noqa: F401  (the API)
from .slash import split_slashes

MAX_DEPTH = 64  # braces in one text; also wildcards inside wildcards (`expand.resolving`)
TOO_DEEP = ("the template nests too deeply: its braces and wildcards, counted through every wildcard file, go "
            "deeper than can be read; nest fewer levels")
ESCAPABLE = set("{}|/_\\$:@")

_WEIGHT_HEAD = re.compile(r"\s*([-+]?[0-9.][0-9.eE+\-]*)\s*::")
# A name head, with the spaces after its ':' (as before a weight: `{@c:  red}` is `red`, not ` red`), not a
# line break; _is_name checks the name itself.
_NAME_HEAD = re.compile(r"\s*@([^\s:|{}\\]*)\s*(:)[^\S\n]*")
_AT_HEAD = re.compile(r"\s*@([^:|{}]*)")  # an alternation that starts with '@' names its factor
_K_HEAD = re.compile(r"\s*(\d+)(?:\s*-\s*(\d+))?\s*\$\$")
# What was meant as a count or a weight but is none (`{-1$$a|b}`, `{x$$a|b}`, `{nan::a|b}`, `{1.5x::a}`): an
# error at it, not prompt text holding '$$' or '::'. A literal '$$' or '::' there is written escaped.
_BAD_K_HEAD = re.compile(r"\s*([^\s{}|$\\]*)\s*\$\$")  # also no count at all: `{$$a|b}`
# A word such as `information::` or `nancy::` is text; only `nan`, `inf` or `infinity` as the whole weight is one.
_BAD_WEIGHT_HEAD = re.compile(r"\s*([-+]?(?:(?:\d|\.\d)[^\s:|{}\\]*|nan|inf(?:inity)?))\s*::", re.IGNORECASE)
# A wildcard's name up to the first "__" after it; `is_wildcard_name` then checks its characters (a combining
# mark, which no regex class here covers, may follow a letter as in factor names).
_WILDCARD = re.compile(r"__([^\W_]\S*?)__")
_PLAIN = re.compile(r"[^\\{}|_]*")  # characters that are text wherever they stand
_JAMO_JOINS = re.compile("[\u1161-\u1175\u11a8-\u11c2]")  # Hangul vowels and finals: NFC joins them to the syllable before


# ----------------------------------------------------------------------------- parser


def parse(text: str, *, origin: str = "<template>", allow_empty: bool = False, first_line: int = 1,
          start: int = 0) -> Seq:
    """Parse `text[start:]`; the text before `start` (a wildcard line's indent) only places errors.
    The text is read in Unicode NFC form, so an accent typed as one character or as a letter and a
    combining mark spells one prompt (and a column counts characters as they are seen).
    Raises GrammarError (and nothing else) on bad input."""
    if not isinstance(text, str):
        raise GrammarError(f"template must be a string, got {type(text).__name__}")
    text = text[:start] + unicodedata.normalize("NFC", text[start:])
    if not allow_empty and not text[start:].strip():
        raise GrammarError("empty template: expected some prompt text", Loc(origin, text, start, first_line))
    parser = _Parser(text, origin, first_line)
    parser.i = start
    try:
        seq = parser.seq(depth=0)
    except RecursionError:  # MAX_DEPTH keeps a text alone far from it: a wildcard file's line read deep in a chain
        raise GrammarError(TOO_DEEP, Loc(origin, text, 0, first_line)) from None
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
        buf: list[str] = []  # literal characters
        escaped: list[int] = []  # where an escaped "/" stands in the joined `buf` (no slash group's slash)
        size = 0  # the joined `buf`'s length
        buf_start = self.i
        text = self.text

        def flush(node_next: bool = False) -> None:
            """The text so far. A node in `parts` precedes it directly, and `node_next` says one follows it:
            a slash group glued to an alternation or wildcard is no whole token."""
            nonlocal size
            if buf:
                parts.extend(split_slashes("".join(buf), self.loc(buf_start), escaped=frozenset(escaped),
                                           after_node=bool(parts), before_node=node_next))
                buf.clear()
                escaped.clear()
                size = 0

        while self.i < len(text):
            ch = text[self.i]
            if ch == "\\" and self.i + 1 < len(text) and text[self.i + 1] in ESCAPABLE:
                nxt = text[self.i + 1]
                if not buf:
                    buf_start = self.i
                if nxt == "/":
                    escaped.append(size)
                buf.append(nxt)
                size += 1
                self.i += 2
            elif ch in "}|":
                break
            elif ch == "{":
                flush(node_next=True)
                parts.append(self.alternation(depth + 1))
                buf_start = self.i
            elif ch == "_" and text.startswith("__", self.i) and (m := _WILDCARD.match(text, self.i)) and (
                    is_wildcard_name(m.group(1))):
                flush(node_next=True)
                parts.append(Wildcard(m.group(1), loc=self.loc(self.i)))
                self.i = m.end()
                buf_start = self.i
            else:
                if not buf:  # the start of this text, or right after an alternation or a wildcard
                    self.no_mark_here(ch, self.text_start(depth, parts))
                    buf_start = self.i
                end = _PLAIN.match(text, self.i + 1).end()  # the run of characters none of the branches above reads
                buf.append(text[self.i:end])
                size += end - self.i
                self.i = end
        flush()
        return Seq(tuple(_merge_texts(parts)))

    def no_mark_here(self, ch: str, where: str) -> None:
        """A combining mark that starts a text joins whatever comes before it only when a prompt is put
        together (`{e|a}\u0301`, `{café|cafe{\u0301|}}`), after the template was read in NFC: the prompt would
        spell its accented letter apart from the same letter typed whole, so it is refused here."""
        if joins_letter_before(ch):
            name = unicodedata.name(ch, "unnamed")
            kind = "combining mark" if unicodedata.category(ch).startswith("M") else "Hangul jamo"
            raise GrammarError(f"{kind} U+{ord(ch):04X} ({name}) {where}: it joins the letter before it only "
                               "when a prompt is put together, so the prompt would spell that letter apart from the "
                               "same letter typed whole (not in NFC); write the accented letter whole, in each option "
                               "that ends with it", self.loc(self.i))

    def text_start(self, depth: int, parts: list) -> str:
        """Where a text begins, for `no_mark_here`: after a node in `parts`, or at its sequence's start."""
        if parts:
            return "right after '}'" if self.text[self.i - 1] == "}" else "right after a wildcard"
        return "at the start of an option" if depth else "at the start of the template or wildcard line"

    def alternation(self, depth: int) -> Alt | Wildcard:
        open_at = self.i
        if depth > MAX_DEPTH:
            raise GrammarError(f"braces nest deeper than {MAX_DEPTH} levels", self.loc(open_at))
        self.i += 1
        text = self.text
        name = self.factor_name()
        k = joiner = stray = None
        if m := _K_HEAD.match(text, self.i):
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise GrammarError(f"bad choose-k range {lo}-{hi}: the upper bound must be >= the lower",
                                   self.loc(m.start(1)), length=m.end() - m.start(1))
            if hi == 0:
                count = text[m.start(1):m.end()].rstrip("$ ")
                raise GrammarError(f"choose-k {count} always chooses nothing; write {{0-1$$...}} for an optional "
                                   "choice, or drop the alternation", self.loc(m.start(1)), length=m.end() - m.start(1))
            k, k_at = (lo, hi), m.start(1)
            self.i = head_end = m.end()
            # A separator runs to the next "$$" (dynamicprompts' rule); a brace before it means there is none.
            end = text.find("$$", self.i)
            if end >= 0 and not any(c in text[self.i:end] for c in "{}"):
                joiner = text[self.i:end]
                if joiner:  # it follows an option's text in every joined selection
                    self.no_mark_here(joiner[0], "at the start of a choose-k separator")
                self.i = end + 2
            elif end >= 0:
                stray = end
        elif m := _BAD_K_HEAD.match(text, self.i):
            what = f"bad choose-k count '{m.group(1)}'" if m.group(1) else "choose-k count missing"
            raise GrammarError(f"{what}: expected a whole number N or a range N-M before '$$', as in "
                               "{2$$a|b|c} (write \\$\\$ for a literal '$$')", self.loc(m.start(1)),
                               length=len(m.group(1)) or 2)
        self.misplaced_name(name, text[k_at:self.i] if k is not None else None)
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
            elif m := _BAD_WEIGHT_HEAD.match(text, self.i):
                raise GrammarError(f"bad weight '{m.group(1)}': expected a finite number >= 0 before '::' (write "
                                   "\\:\\: for a literal '::')", self.loc(m.start(1)), length=len(m.group(1)))
            body = self.seq(depth)
            options.append(Option(body, weight))
            if self.i >= len(text):
                raise GrammarError("unbalanced '{': expected '}' before the end of the template",
                                   self.loc(open_at))
            # The next "$$" was meant to end a separator that holds a brace: in the first option, or past
            # a "}" that closed the alternation too early (too few options for the count, a "}" to come).
            # A "$$" inside braces opened after that "}" is another alternation's own (`{2$$a}{2$$b|c}`).
            if stray is not None and len(options) == 1 and (
                    _top_level_dollars(text, head_end, self.i)
                    or (text[self.i] == "}" and self.i < stray and k[0] > 1 and "}" in text[stray:]
                        and _top_level_dollars(text, self.i + 1, stray + 1))):
                brace = min(p for p in (text.find(c, head_end, stray) for c in "{}") if p >= 0)
                raise GrammarError("a choose-k separator cannot hold '{' or '}': it runs from the count's '$$' "
                                   "to the next '$$' (write \\$\\$ for a literal '$$' in an option)",
                                   self.loc(brace))
            if text[self.i] == "}":
                self.i += 1
                break
            self.i += 1  # "|"
        if k is not None:
            _check_choose_k(k, joiner, options, self.loc(k_at))
        if len(options) == 1 and not options[0].body.parts:
            raise GrammarError("empty alternation: it has no text to choose; write {|text} for an optional "
                               "clause, or \\{\\} for literal braces", self.loc(open_at), length=self.i - open_at)
        weights = [o.weight for o in options if o.weight is not None]
        if weights and sum(weights) == 0 and len(weights) == len(options):
            raise GrammarError("bad weights: all options weigh 0, so none can be sampled", self.loc(open_at))
        # {@name: __wildcard__} names the wildcard itself.
        if name and k is None and sole_wildcard(options) is not None:
            w = options[0].body.parts[0]
            return Wildcard(w.path, name, loc=w.loc)
        return Alt(tuple(options), name=name, k=k, joiner=joiner, loc=self.loc(open_at))

    def factor_name(self) -> str | None:
        """`@name:` right after "{", moving past it; a malformed one is an error."""
        m = _NAME_HEAD.match(self.text, self.i)
        if m and _is_name(m.group(1)):
            if self.text.startswith("::", m.start(2)):
                raise GrammarError(f"'::' after factor name '@{m.group(1)}': a name ends with one ':' "
                                   f"({{@{m.group(1)}: a|b}}; a weight goes before an option's text, "
                                   f"{{@{m.group(1)}: 2::a|b}}); write {{@{m.group(1)}: \\:a}} for an option "
                                   "that starts with ':'", self.loc(m.start(2)), length=2)
            self.i = m.end()
            return m.group(1)
        if m := _AT_HEAD.match(self.text, self.i):
            bad = m.group(1).rstrip()
            raise GrammarError(f"bad factor name '@{bad}': expected {{@name: a|b}} with a name of "
                               "letters, digits, '_', '-' or '.' starting with a letter or '_', then ':' "
                               "(write \\@ for a literal '@')", self.loc(m.start(1) - 1), length=len(bad) + 1)
        return None

    def misplaced_name(self, name: str | None, k_head: str | None) -> None:
        """A `@name:` head where the options start: a second name, or one written after the count."""
        m = _NAME_HEAD.match(self.text, self.i)
        if not m or not (name or k_head):
            return
        at, found = m.start(1) - 1, m.group(1)
        if name:
            msg = (f"a second factor name '@{found}': an alternation has one name, right after '{{' "
                   f"({{@{name}: a|b}})")
        else:
            msg = (f"factor name '@{found}' after the choose-k count: write the name first, "
                   f"{{@{found}: {k_head}a|b|c}}")
        raise GrammarError(msg + " (write \\@ for a literal '@')", self.loc(at), length=len(found) + 1)


def _top_level_dollars(text: str, start: int, stop: int) -> bool:
    """Whether an unescaped "$$" starts in `text[start:stop]` outside any braces opened there."""
    depth, i = 0, start
    while i < stop:
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPABLE:
            i += 2
            continue
        if depth == 0 and text.startswith("$$", i):
            return True
        depth = max(0, depth + (c == "{") - (c == "}"))  # a "}" of braces opened before `start` is passed
        i += 1
    return False


def joins_letter_before(ch: str) -> bool:
    """Whether `ch` joins the letter before it in NFC: a combining mark, or a Hangul vowel or final jamo."""
    return unicodedata.category(ch).startswith("M") or bool(_JAMO_JOINS.match(ch))


def _is_name(name: str) -> bool:
    """Letters (any script), digits, combining marks, "_", "-" and "."; a letter or "_" first."""
    return bool(name) and (name[0].isalpha() or name[0] == "_") and all(
        c.isalnum() or c in "_-." or unicodedata.category(c).startswith("M") for c in name)


def is_wildcard_name(path: str) -> bool:
    """Letters (any script), digits, combining marks, "_", "-", "." and "/"; a letter or digit first (a
    "_" there would read as text before the wildcard: `___x__` is `_` then `__x__`)."""
    return bool(path) and path[0].isalnum() and all(
        c.isalnum() or c in "_-./" or unicodedata.category(c).startswith("M") for c in path)


def sole_wildcard(options) -> Wildcard | None:
    """The wildcard when an alternation's only option is an unweighted wildcard alone."""
    if len(options) == 1 and options[0].weight is None and len(options[0].body.parts) == 1:
        part = options[0].body.parts[0]
        if isinstance(part, Wildcard):
            return part
    return None


def _check_choose_k(k: tuple[int, int], joiner: str | None, options: list, loc: Loc) -> None:
    """Enough options, and enough of non-zero weight (zero-weight options are never sampled)."""
    if (w := sole_wildcard(options)) is not None and w.name is None:
        return  # {2$$__w__} chooses among the wildcard's lines, checked when it is resolved
    read = f" (the separator {joiner!r} runs up to the next '$$')" if joiner is not None else ""
    if k[1] > len(options):
        have = _plural(len(options), "option")
        raise GrammarError(f"choose-k asks for {k[1]} but the alternation has only {have}{read}"
                           f"{_lone_wildcard_hint(k, joiner, options)}", loc)
    live = sum(1 for o in options if o.weight != 0)
    if k[1] > live:
        raise GrammarError(f"choose-k asks for {k[1]} but the alternation has only {_plural(live, 'option')} of "
                           f"non-zero weight (of {len(options)}); zero-weight options are never sampled: lower the "
                           "count or give them a weight", loc)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _lone_wildcard_hint(k: tuple[int, int], joiner: str | None, options: list) -> str:
    """How to choose among a wildcard's lines, for a single option that holds one with something else
    (a space, a weight, other text): only a wildcard alone in the braces is spread into options."""
    if len(options) != 1:
        return ""
    w = next((p for p in options[0].body.parts if isinstance(p, Wildcard)), None)
    if w is None:
        return ""
    head = (f"{k[0]}" if k[0] == k[1] else f"{k[0]}-{k[1]}") + "$$" + ("" if joiner is None else f"{joiner}$$")
    name = f"@{w.name}: " if w.name else ""
    return (f"; a wildcard is spread into options only when it stands alone in the braces, with no spaces, "
            f"weight or other text: {{{name}{head}__{w.path}__}}")


def _merge_texts(parts: list) -> list:
    out: list = []
    for p in parts:
        if isinstance(p, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].value + p.value, loc=out[-1].loc)
        elif not (isinstance(p, Text) and p.value == ""):
            out.append(p)
    return out


# ----------------------------------------------------------------------------- render


def escape_text(value: str, *, option_start: bool = False) -> str:
    """Literal text -> template text that parses back to exactly this text.

    `{ } | / _ \\ $` are always escaped; `@` and `:` only where they would
    read as an option head (a name, or a weight, well-formed or not), so A1111 emphasis such
    as `(word:1.2)` stays readable.
    """
    out = re.sub(r"([{}|/_\\$])", r"\\\1", value)
    if option_start:
        for head, char in ((_AT_HEAD, "@"), (_WEIGHT_HEAD, ":"), (_BAD_WEIGHT_HEAD, ":")):
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
