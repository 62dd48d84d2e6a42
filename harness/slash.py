"""The slash shorthand: where literal template text such as `red/green lambo` means `{red|green} lambo`.

The parser hands it each run of literal text with where its escaped slashes stand, and gets back
`Text` and slash `Alt` nodes.
"""

from __future__ import annotations

import re
import unicodedata

from .grammar_ast import Alt, Loc, Option, Seq, Text

ESC_SLASH = "\ue000"  # stands in for an escaped "/" in the text slash groups are found in (`_scan_text`)
_OTHER = "\ue001"  # stands in there for a U+E000 of the text itself: not a slash, nor part of a word
# A word may hold escaped slashes (`AC\/DC`) and apostrophes (rock'n'roll, rock’n’roll). A group is a whole
# token: before it only the start, a space, an opening bracket or quote, or a comma that is no thousands
# separator; after it only the end, a space, a closing bracket or quote, or sentence punctuation. So
# `rust/C++`, `AT&T/Verizon` and `1,000mm/2mm` stay text instead of splitting inside a word, while
# '(red/green)', "red/green." and 'red/green' split; a quote next to a letter is an apostrophe, not a quote.
_WORD = rf"\w(?:(?:[\w\-'’.]|(?<=\w){ESC_SLASH})*\w)?"  # an escaped slash joins letters only: `AC\/DC`
_BEFORE = r"(?<![^\s(\[\"'“‘„‚«»‹›,])(?<!\d,)(?<!\w')(?<!\w’)"
_AFTER = r"(?![^\s)\]\"'”’“‘«»‹›,.…;:!?])(?!['’]\w)"
_SLASH_GROUP = re.compile(rf"{_BEFORE}{_WORD}(?:/{_WORD})+{_AFTER}")
_TOKEN_END = " \t\n\r,;()[]\"“”„«»‹›"  # what ends the token a URL test looks at around a group
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# A host name such as "example.com" or "github.io" (a common top-level domain after a dot): a URL's path
# follows it, not a choice. Other inner dots are words ("node.js/deno", "St.Louis/Chicago" split).
_TLDS = ("com|org|net|edu|gov|io|ai|dev|app|co|uk|de|fr|jp|cn|ru|info|me|xyz|tv|us|ca|au|eu|nl|it|es|"
         "ly|gg|so|sh|art|site|blog|tech")
_HOST = re.compile(rf"(?:[\w\-]+\.)+(?:{_TLDS})", re.IGNORECASE)
# Abbreviations the slash rule keeps literal (compared lower-case, also inside a longer group: w/o/with is
# text); "w/" stays literal by the empty-side rule. Word pairs such as his/her are not here: they may be meant
# as alternatives.
ABBREVIATIONS = frozenset({
    # shorthand
    "w/o", "b/w", "and/or", "n/a", "c/o", "a/k/a", "s/he", "y/o",
    # units: a rate or a ratio (also right after a number: `100km/h`, see `_holds_abbreviation`)
    "km/h", "m/s", "m/s²", "ft/s", "mi/h", "cm/s", "mm/s", "rad/s", "km/s", "kb/s", "mb/s", "gb/s",
    "kbit/s", "mbit/s", "gbit/s", "g/cm³", "kg/m³", "mg/ml", "l/min", "l/100km",
    # technical
    "i/o", "tcp/ip", "a/b", "a/c", "p/e", "r/c", "ac/dc",
})
_ABBREVIATION_WORDS = [a.split("/") for a in ABBREVIATIONS]
_LEADING_NUMBER = re.compile(r"^\d+(?:[.,]\d+)*")


def split_slashes(raw: str, loc: Loc, *, escaped: frozenset[int] = frozenset(), after_node: bool = False,
                  before_node: bool = False) -> list:
    """Literal text -> Text and slash-shorthand Alt nodes. `after_node` / `before_node`: an alternation or
    wildcard touches the text's start / end, so a group there is glued to it and no whole token.

    The rule: a slash group is two or more words joined by single unescaped
    slashes, with no space around them ("red/green/blue"). A word is a run of
    letters, digits, combining marks, "_", "-", apostrophes and inner "." and escaped slashes; it must
    contain a letter and must not be a number. A group is a whole token (`_BEFORE`, `_AFTER`), so
    "AT&T/Verizon" and "rust/C++" are text, and so is a group glued to a brace or wildcard
    ("{a|b}red/green", "red/green__colours__"). Groups touching a URL ("://", "www.",
    or a first word that is a host name such as "example.com") or with an empty side
    ("w/", "a//b") stay literal, so "1/2 cup",
    "24/7", "f/2.8" and "http://x/y" are text, as are the ABBREVIATIONS (also within a longer group)
    ("w/o", "b/w", "and/or", "km/h", "I/O", ...). Anything else uses braces.
    """
    scan = _scan_text(raw, escaped)
    if "/" not in scan:
        return [Text(raw, loc=loc)]
    out: list = []
    pos = 0
    for m in _SLASH_GROUP.finditer(_marks_as_letters(scan)):
        words = scan[m.start():m.end()].split("/")
        token = _token_around(scan, m.start(), m.end())
        lower = [w.lower() for w in words]
        if ((after_node and m.start() == 0) or (before_node and m.end() == len(raw))
                or "://" in token or token.lower().startswith("www.") or _HOST.fullmatch(words[0])
                or _holds_abbreviation(lower)
                or any(_NUMBER.fullmatch(w) or not re.search(r"[^\W\d_]", w) for w in words)):
            continue
        out.append(Text(raw[pos:m.start()], loc=loc))
        at = Loc(loc.origin, loc.text, loc.offset + m.start(), loc.first_line)
        options, start = [], m.start()
        for w in words:  # each word's own text: its escaped slashes are slashes again
            options.append(Option(Seq((Text(raw[start:start + len(w)]),))))
            start += len(w) + 1
        out.append(Alt(tuple(options), slash=True, loc=at))
        pos = m.end()
    out.append(Text(raw[pos:], loc=loc))
    return [p for p in out if not (isinstance(p, Text) and p.value == "")]


def _scan_text(raw: str, escaped: frozenset[int]) -> str:
    """`raw` as slash groups are found in it, of the same length: an escaped slash (at a position in `escaped`)
    is `ESC_SLASH`, which joins the letters of a word, and a `ESC_SLASH` character of the text is `_OTHER`."""
    if not escaped and ESC_SLASH not in raw:
        return raw
    return "".join(ESC_SLASH if i in escaped else _OTHER if c == ESC_SLASH else c for i, c in enumerate(raw))


def _holds_abbreviation(words: list[str]) -> bool:
    """Whether lower-case `words` hold one of the ABBREVIATIONS, its first word perhaps after a number
    (`100km/h`, `5m/s`)."""
    for a in _ABBREVIATION_WORDS:
        for i in range(len(words) - len(a) + 1):
            head = words[i]
            if words[i + 1:i + len(a)] == a[1:] and a[0] in (head, _LEADING_NUMBER.sub("", head)):
                return True
    return False


def _marks_as_letters(raw: str) -> str:
    """`raw` with each combining mark replaced by a letter, so "the\u0301" (NFD) is one word like "thé"."""
    if raw.isascii():
        return raw
    return "".join("a" if unicodedata.category(c).startswith("M") else c for c in raw)


def _token_around(raw: str, start: int, end: int) -> str:
    left = max((raw.rfind(c, 0, start) for c in _TOKEN_END), default=-1) + 1
    rights = [p for p in (raw.find(c, end) for c in _TOKEN_END) if p >= 0]
    return raw[left: min(rights) if rights else len(raw)]
