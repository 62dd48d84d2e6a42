"""Mutation operators on prompts: the variation step of prompt search, and ablation.

A prompt here is template text; a concrete prompt is a template without
choices (`literal` turns one back into its text, `escape_text` goes the other
way). Operators read the prompt two ways: as the AST (`grammar.parse`), where
alternations and wildcards stay opaque units, and as a list of clauses.

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

**Operators** (`OPERATORS`, by name; each is a pure function of the prompt, a
`random.Random` and `Resources`, and returns a `Mutant` or None when it does not
apply):

- `swap`: a clause that is a line of a modifier list becomes another line of
  that list (`by greg rutkowski` -> `by moebius`); a word that is an option of
  a factor of the source template, or of a word list such as colours, becomes
  another option (`a red car` -> `a blue car`).
- `insert`: a line of a modifier list as a new clause after the first.
- `delete`: drop one clause (prompts with two or more clauses).
- `reorder`: move one clause to another position.
- `crossover`: one-point, clause-level: the first clauses of the prompt and the
  last clauses of a partner prompt (duplicate clauses dropped).
- `reweight`: wrap a clause in A1111 emphasis `(clause:1.2)`, or move an
  existing `(clause:w)` weight by 0.1 or 0.2 (kept in [0.1, 2]).

`leave_one_out` is the ablation: one prompt per clause, each missing that clause.
A mutant records its lineage: the parent's key (`prompt_key`: `content_key` of
the parent's prompt text), all parents' keys (two for crossover), the operator
and its JSON-able arguments.
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .core import canonical_json, content_key
from .expand import alternations, compile_template, expand
from .grammar import Seq, Text, escape_text, parse, render
from .wildcards import WildcardLibrary

DEFAULT_LISTS = ("styles", "mediums", "artists", "lighting", "quality", "colours")
# How a line of a list reads as a clause, and lists whose items are single words inside clauses.
LIST_FORMS = {"artists": "by {}", "colours": "{} color palette"}
WORD_LISTS = frozenset({"colours"})
EMPHASIS_WEIGHTS = (0.8, 0.9, 1.1, 1.2, 1.3)
WEIGHT_STEPS = (-0.2, -0.1, 0.1, 0.2)
WEIGHT_RANGE = (0.1, 2.0)
MAX_ITEMS = 2000  # expansions kept per list or factor

_WS = re.compile(r"\s+")
_EMPHASIS = re.compile(r"\((.*):\s*(\d+(?:\.\d+)?)\s*\)", re.S)


def prompt_key(prompt: str) -> str:
    """The identity of a prompt in lineage records: `content_key` of its text."""
    return content_key(prompt)


# ----------------------------------------------------------------------------- lineage


@dataclass(frozen=True)
class Mutant:
    """A prompt (template text) and how it was made from its parent(s)."""

    prompt: str
    parent_key: str
    operator: str
    args: Mapping[str, Any] = field(default_factory=dict)
    parents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.parents:
            object.__setattr__(self, "parents", (self.parent_key,))
        canonical_json(dict(self.args))  # arguments must be JSON-able; fail where they are made

    def __hash__(self) -> int:
        return hash((self.prompt, self.parents, self.operator, canonical_json(dict(self.args))))

    @property
    def key(self) -> str:
        return prompt_key(self.prompt)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "key": self.key, "parent_key": self.parent_key,
                "parents": list(self.parents), "operator": self.operator, "args": dict(self.args)}


# ----------------------------------------------------------------------------- clauses


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


# ----------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Vocabulary:
    """Interchangeable texts: the lines of a modifier list, or a factor's options.

    `form` is how an item reads as a clause (`by {}` for artists); `words`
    means items are also found as whole words inside clauses (colours, factor
    options); `insertable` lists feed `insert`.
    """

    name: str
    items: tuple[str, ...]
    form: str = "{}"
    words: bool = False
    insertable: bool = True

    def clause(self, item: str) -> str:
        return self.form.format(item)

    def item_of_clause(self, text: str) -> str | None:
        head, _, tail = self.form.partition("{}")
        if text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail):
            item = text[len(head): len(text) - len(tail)]
            return item if item in self.items else None
        return None


@dataclass(frozen=True)
class Resources:
    """What the operators draw from: modifier lists and a source template's factors."""

    lists: tuple[Vocabulary, ...] = ()
    factors: tuple[Vocabulary, ...] = ()

    @classmethod
    def load(cls, library: WildcardLibrary, lists: Sequence[str] | None = None,
             template: str | None = None) -> "Resources":
        """Read modifier lists from `library` (default: `DEFAULT_LISTS`, those
        present) and the factors of `template` (its alternations' options)."""
        explicit = lists is not None
        vocabularies = []
        for name in (DEFAULT_LISTS if lists is None else lists):
            if library.get(name) is None:
                if explicit:
                    close = difflib.get_close_matches(name, library.names(), n=3, cutoff=0.5)
                    hint = f"; did you mean {', '.join(close)}?" if close else ""
                    where = ", ".join(str(p) for p in library.search_path) or "(no wildcard folders found)"
                    raise ValueError(f"modifier list {name!r}: no {name}.txt in {where}{hint}")
                continue
            items = _expansions(compile_template(f"__{name}__", library=library).tree)
            vocabularies.append(Vocabulary(name, tuple(i for i in items if i), LIST_FORMS.get(name.split("/")[0], "{}"),
                                           words=name.split("/")[0] in WORD_LISTS))
        factors = []
        if template is not None:
            tree = compile_template(template, library=library).tree
            for alt in alternations(tree):
                if alt.k is None:
                    items = list(dict.fromkeys(t for o in alt.options for t in _expansions(o.body)))
                    if len(items) > 1:
                        factors.append(Vocabulary(f"factor:{alt.name}", tuple(items), words=True, insertable=False))
        return cls(tuple(vocabularies), tuple(factors))

    def digest(self) -> str:
        """A content key of everything the operators can draw (for resume checks)."""
        return content_key([[v.name, list(v.items), v.form, v.words, v.insertable]
                            for v in (*self.lists, *self.factors)])


def _expansions(tree) -> list[str]:
    return list(dict.fromkeys(_WS.sub(" ", v.prompt).strip() for v in expand(tree, limit=MAX_ITEMS)))


def as_resources(resources: Resources | WildcardLibrary | None) -> Resources:
    if resources is None:
        return Resources()
    if isinstance(resources, WildcardLibrary):
        return Resources.load(resources)
    return resources


# ----------------------------------------------------------------------------- operators


def _mutant(parent: str, clauses: list[str], operator: str, args: dict,
            parents: tuple[str, ...] = ()) -> Mutant | None:
    clauses = split_clauses(join_clauses(clauses)) if clauses else []
    if not clauses:
        return None
    return Mutant(join_clauses(clauses), prompt_key(parent), operator, args, parents)


def _word_spans(text: str, item: str) -> list[int]:
    """Starts of whole-word occurrences of `item` in `text`."""
    lead = r"(?<!\w)" if re.match(r"\w", item) else ""
    trail = r"(?!\w)" if re.search(r"\w$", item) else ""
    return [m.start() for m in re.finditer(lead + re.escape(item) + trail, text)]


def swap(prompt: str, rng: random.Random, resources: Resources) -> Mutant | None:
    """Replace a list line or factor option in the prompt by another one of the same list/factor."""
    resources = as_resources(resources)
    tree = parse(normalise(prompt), allow_empty=True)
    clauses = _clause_parts(tree)
    texts = [render(Seq(c)) for c in clauses]
    sites: list[tuple] = []
    for ci, parts in enumerate(clauses):
        if len(parts) == 1 and isinstance(parts[0], Text):
            for vocab in resources.lists:
                item = vocab.item_of_clause(parts[0].value)
                if item is not None:
                    sites.append(("clause", ci, vocab, item))
    # Words are looked for in the unsplit literal text, so factor options such as ", by x" are found too.
    word_vocabs = [v for v in (*resources.lists, *resources.factors) if v.words]
    for pi, part in enumerate(tree.parts):
        if isinstance(part, Text):
            for vocab in word_vocabs:
                for item in vocab.items:
                    if item:
                        sites += [("word", (pi, at), vocab, item) for at in _word_spans(part.value, item)]
    while sites:
        kind, where, vocab, old = sites.pop(rng.randrange(len(sites)))
        if kind == "clause":
            choices = [i for i in vocab.items if i != old and escape_text(vocab.clause(i)) not in texts]
        else:
            choices = [i for i in vocab.items if i != old]
        if not choices:
            continue
        new = rng.choice(choices)
        if kind == "clause":
            out = list(texts)
            out[where] = escape_text(vocab.clause(new))
            args = {"vocabulary": vocab.name, "old": old, "new": new, "clause": where}
        else:
            pi, at = where
            parts = list(tree.parts)
            value = parts[pi].value
            parts[pi] = Text(value[:at] + new + value[at + len(old):])
            out = split_clauses(render(Seq(tuple(parts))))
            args = {"vocabulary": vocab.name, "old": old, "new": new, "part": pi, "at": at}
        m = _mutant(prompt, out, "swap", args)
        if m is not None:
            return m
    return None


def insert(prompt: str, rng: random.Random, resources: Resources) -> Mutant | None:
    """Add a line of a modifier list as a new clause (anywhere after the first)."""
    resources = as_resources(resources)
    texts = split_clauses(prompt)
    present = set(texts)
    options = []
    for vocab in resources.lists:
        if vocab.insertable:
            items = [i for i in vocab.items if escape_text(vocab.clause(i)) not in present]
            if items:
                options.append((vocab, items))
    if not options or not texts:
        return None
    vocab, items = options[rng.randrange(len(options))]
    item = rng.choice(items)
    at = rng.randint(1, len(texts))
    clause = vocab.clause(item)
    return _mutant(prompt, texts[:at] + [escape_text(clause)] + texts[at:], "insert",
                   {"list": vocab.name, "text": clause, "at": at})


def delete(prompt: str, rng: random.Random, resources: Resources | None = None) -> Mutant | None:
    """Drop one clause; needs two or more."""
    texts = split_clauses(prompt)
    if len(texts) < 2:
        return None
    i = rng.randrange(len(texts))
    return _mutant(prompt, texts[:i] + texts[i + 1:], "delete", {"clause": i, "text": texts[i]})


def reorder(prompt: str, rng: random.Random, resources: Resources | None = None) -> Mutant | None:
    """Move one clause to another position (a move that changes the order)."""
    texts = split_clauses(prompt)
    moves = []
    for i in range(len(texts)):
        rest = texts[:i] + texts[i + 1:]
        for j in range(len(texts)):
            if j != i and rest[:j] + [texts[i]] + rest[j:] != texts:
                moves.append((i, j))
    if not moves:
        return None
    i, j = moves[rng.randrange(len(moves))]
    rest = texts[:i] + texts[i + 1:]
    return _mutant(prompt, rest[:j] + [texts[i]] + rest[j:], "reorder", {"from": i, "to": j, "text": texts[i]})


def crossover(prompt: str, partner: str, rng: random.Random, resources: Resources | None = None) -> Mutant | None:
    """One-point clause crossover: `prompt`'s first clauses, then `partner`'s last ones."""
    a, b = split_clauses(prompt), split_clauses(partner)
    if not a or not b:
        return None
    i, j = rng.randint(1, len(a)), rng.randrange(len(b))
    child = list(dict.fromkeys(a[:i] + b[j:]))
    return _mutant(prompt, child, "crossover", {"cut": i, "partner_cut": j},
                   parents=(prompt_key(prompt), prompt_key(partner)))


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


def reweight(prompt: str, rng: random.Random, resources: Resources | None = None) -> Mutant | None:
    """Emphasise a clause `(clause:w)`, or move an existing weight up or down."""
    texts = split_clauses(prompt)
    if not texts:
        return None
    i = rng.randrange(len(texts))
    found = emphasis(texts[i])
    lo, hi = WEIGHT_RANGE
    if found is None:
        old, new, inner = None, rng.choice(EMPHASIS_WEIGHTS), texts[i]
    else:
        inner, old = found
        step = rng.choice(WEIGHT_STEPS)
        new = round(min(hi, max(lo, old + step)), 2)
        if new == old:
            new = round(min(hi, max(lo, old - step)), 2)
    out = list(texts)
    out[i] = f"({inner}:{new:g})"
    return _mutant(prompt, out, "reweight", {"clause": i, "old": old, "new": new})


@dataclass(frozen=True)
class Operator:
    name: str
    fn: Callable
    summary: str
    needs_partner: bool = False


OPERATORS: dict[str, Operator] = {op.name: op for op in (
    Operator("swap", swap, "replace a list line or factor option by another of the same list/factor"),
    Operator("insert", insert, "add a modifier-list line as a new clause"),
    Operator("delete", delete, "drop one clause"),
    Operator("reorder", reorder, "move one clause to another position"),
    Operator("crossover", crossover, "first clauses of the prompt + last clauses of a partner", True),
    Operator("reweight", reweight, "A1111 emphasis (clause:w), or adjust an existing weight"),
)}


def get_operator(name: str) -> Operator:
    try:
        return OPERATORS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(OPERATORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown mutation operator {name!r}{hint}; valid operators: "
                         f"{', '.join(OPERATORS)}") from None


def apply(name: str, prompt: str, rng: random.Random, resources: Resources | WildcardLibrary | None = None, *,
          partner: str | None = None) -> Mutant | None:
    """Run one operator by name; None when it does not apply to this prompt."""
    op = get_operator(name)
    resources = as_resources(resources)
    if op.needs_partner:
        if partner is None:
            raise ValueError(f"operator {name!r} needs a partner prompt")
        return op.fn(prompt, partner, rng, resources)
    return op.fn(prompt, rng, resources)


def operator_weights(operators: Mapping[str, float] | Sequence[str] | None, *,
             partnered: bool = True) -> dict[str, float]:
    """The operators that can be drawn, with their rates: names must be known,
    rates finite numbers >= 0 with at least one > 0. Without partners
    (`partnered=False`) operators that need one are left out; at least one
    operator must remain."""
    if operators is None:
        operators = list(OPERATORS)
    weights = dict(operators) if isinstance(operators, Mapping) else {name: 1.0 for name in operators}
    for name, w in weights.items():
        get_operator(name)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ValueError(f"operator {name!r} has rate {w!r}; rates must be finite numbers >= 0, "
                             "with at least one > 0")
    positive = {n: float(w) for n, w in weights.items() if w > 0}
    if not positive:
        rates = ", ".join(f"{n}={w:g}" for n, w in weights.items()) or "none given"
        raise ValueError(f"no operator has a rate > 0 ({rates}); rates must be finite numbers >= 0, "
                         "with at least one > 0")
    usable = {n: w for n, w in positive.items() if partnered or not OPERATORS[n].needs_partner}
    if not usable:
        raise ValueError(f"operator(s) {', '.join(positive)} need a partner prompt and no partner was given; "
                         "give a partner or add an operator that needs none")
    return usable


def mutate(prompt: str, rng: random.Random, resources: Resources | WildcardLibrary | None = None, *,
           operators: Mapping[str, float] | Sequence[str] | None = None,
           partners: Sequence[str] = ()) -> Mutant | None:
    """One mutant from an operator drawn with the given weights (all equally by
    default). Operators that do not apply are set aside and another is drawn;
    None when none applies. Crossover draws its partner from `partners`.
    Raises ValueError for unknown operators, bad rates, or only operators that
    need a partner and no partners."""
    resources = as_resources(resources)
    weights = operator_weights(operators, partnered=bool(partners))
    while weights:
        names = list(weights)
        name = rng.choices(names, weights=[weights[n] for n in names])[0]
        partner = rng.choice(list(partners)) if OPERATORS[name].needs_partner else None
        m = apply(name, prompt, rng, resources, partner=partner)
        if m is not None:
            return m
        del weights[name]
    return None


def mutants(prompt: str, n: int, rng: random.Random, resources: Resources | WildcardLibrary | None = None, *,
            operators: Mapping[str, float] | Sequence[str] | None = None,
            partners: Sequence[str] = (), attempts: int = 20) -> list[Mutant]:
    """Up to `n` distinct mutants that differ from the (normalised) prompt;
    fewer only when `attempts * n` draws cannot find more. Operators, rates and
    partners (each must parse as a template) are checked before any work."""
    if n < 0:
        raise ValueError(f"number of mutants must be >= 0, got {n}")
    resources = as_resources(resources)
    operator_weights(operators, partnered=bool(partners))
    for partner in partners:
        parse(partner, origin="<partner>")
    seen = {normalise(prompt)}
    out: list[Mutant] = []
    for _ in range(attempts * n):
        if len(out) >= n:
            break
        m = mutate(prompt, rng, resources, operators=operators, partners=partners)
        if m is None:
            break
        if m.prompt not in seen:
            seen.add(m.prompt)
            out.append(m)
    return out


def leave_one_out(prompt: str) -> list[Mutant]:
    """Exactly N prompts for N clauses: the i-th lacks clause i. Needs N >= 2."""
    texts = split_clauses(prompt)
    if len(texts) < 2:
        raise ValueError(f"prompt {prompt!r} has {len(texts)} clause(s); leave-one-out needs two or more "
                         "(clauses are separated by commas outside emphasis brackets)")
    key = prompt_key(prompt)
    return [Mutant(join_clauses(texts[:i] + texts[i + 1:]), key, "leave_one_out", {"clause": i, "text": texts[i]})
            for i in range(len(texts))]
