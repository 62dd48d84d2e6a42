"""The mutation operators: each is a pure function of the prompt, a
`random.Random` and `Resources`, and returns a `Mutant` or None when it does
not apply (`registry.OPERATORS` has them by name).

Operators read the prompt two ways: as the AST (`grammar.parse`), where
alternations and wildcards stay opaque units, and as a list of clauses.

- `swap`: a clause that is a line of a modifier list becomes another line of
  that list (`by greg rutkowski` -> `by moebius`); a word that is an option of
  a factor of the source template, or of a word list such as colours, becomes
  another option (`a red car` -> `a blue car`); a word found only inside a longer
  option (`red` in `dark red`) is swapped as that whole option, never alone.
- `insert`: a line of a modifier list as a new clause after the first.
- `delete`: drop one clause (prompts with two or more clauses).
- `reorder`: move one clause to another position.
- `crossover`: one-point, clause-level: the first clauses of the prompt and the
  last clauses of a partner prompt (duplicate clauses dropped), at a cut where
  the child is a valid template (a factor name used by both halves is not).
- `reweight`: wrap a clause in A1111 emphasis `(clause:1.2)`, or move the
  weight of a clause already in emphasis (`(clause:w)`, `(clause)`, `[clause]`,
  nested) by 0.1 or 0.2, written as one `(clause:w)` (kept in [0.1, 2]; a weight
  outside that range, such as 5 or -1, moves toward it).
"""

from __future__ import annotations

import random
import re

from ..emphasis import WEIGHT
from ..expand.names import assign_names
from ..grammar import GrammarError, Seq, Text, escape_text, parse, render
from .clauses import (_clause_parts, emphasis, emphasis_span, join_clauses, normalise, split_clauses,
                      weight_by_choice)
from .lineage import Mutant, prompt_key
from .resources import Resources, as_resources

EMPHASIS_WEIGHTS = (0.8, 0.9, 1.1, 1.2, 1.3)
WEIGHT_STEPS = (-0.2, -0.1, 0.1, 0.2)
WEIGHT_RANGE = (0.1, 2.0)


def _mutant(parent: str, clauses: list[str], operator: str, args: dict,
            parents: tuple[str, ...] = (), *, not_like: tuple[str, ...] = ()) -> Mutant | None:
    """The mutant of `clauses`, normalised; None when it is empty or the same prompt as the parent (or as
    a prompt of `not_like`, such as a crossover partner): a copy is no mutant."""
    clauses = split_clauses(join_clauses(clauses)) if clauses else []
    prompt = join_clauses(clauses)
    if not clauses or prompt in {normalise(p) for p in (parent, *not_like)}:
        return None
    return Mutant(prompt, prompt_key(parent), operator, args, parents)


def _word_spans(text: str, item: str) -> list[int]:
    """Starts of whole-word occurrences of `item` in `text`, none in an emphasis weight (`:1.2)`)."""
    lead = r"(?<!\w)" if re.match(r"\w", item) else ""
    trail = r"(?!\w)" if re.search(r"\w$", item) else ""
    weights = _weight_spans(text)
    return [m.start() for m in re.finditer(lead + re.escape(item) + trail, text)
            if not any(m.start() < end and start < m.end() for start, end in weights)]


def _inside_longer(start: int, end: int, vocab, found: list[tuple]) -> bool:
    """Whether the match `text[start:end]` of `vocab` lies inside a longer match of the same vocabulary in
    `found` ((start, end, vocab, ...) each): `red` inside the option `dark red` of one factor is part of that
    option, not an option of its own, and swapping it alone would make a prompt that is no level of the
    factor (`a dark dark red car`). Another factor's or list's word there is its own (`{red|blue}
    {car|red car}` on `red car`: `red` is the first factor's)."""
    return any(s <= start and end <= e and e - s > end - start and v is vocab for s, e, v, *_ in found)


def _weight_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each A1111 emphasis weight in `text`: the `:N` right before a `)`, up to and with the
    `)`, and the last `:` part of a `[...]` (prompt editing's step, `[a:b:0.5]`). A `)` whose `(` is not
    in `text` (an alternation stands between them) is read from the start."""
    spans, opened, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "([":
            opened.append((ch, i))
        elif ch in ")]":
            bracket, at = opened.pop() if opened else ("(", -1)
            if ch == ")" and bracket == "(" and (m := WEIGHT.search(text, at + 1, i)) is not None:
                spans.append((m.start(), i + 1))
            elif ch == "]" and bracket == "[" and (colon := text.rfind(":", at + 1, i)) >= 0:
                spans.append((colon, i + 1))  # prompt editing's `:when` ([a:b:0.5]) is no word either
        i += 1
    return spans


def swap(prompt: str, rng: random.Random, resources: Resources) -> Mutant | None:
    """Replace a list line or factor option in the prompt by another one of the same list/factor."""
    resources = as_resources(resources)
    tree = parse(normalise(prompt), allow_empty=True)
    clauses = _clause_parts(tree)
    texts = [render(Seq(c)) for c in clauses]
    sites: list[tuple] = []
    wraps: dict[int, tuple[str, str]] = {}  # clause -> the emphasis around a list line, kept on a swap
    for ci, parts in enumerate(clauses):
        if len(parts) == 1 and isinstance(parts[0], Text):
            value = parts[0].value
            start, end, _ = emphasis_span(value) or (0, len(value), 1.0)
            text, wraps[ci] = value[start:end], (value[:start], value[end:])
            for vocab in resources.lists:
                item = vocab.item_of_clause(text)
                if item is not None:
                    sites.append(("clause", ci, vocab, item))
    # Words are looked for in the unsplit literal text, so factor options such as ", by x" are found too.
    word_vocabs = [v for v in (*resources.lists, *resources.factors) if v.words]
    for pi, part in enumerate(tree.parts):
        if isinstance(part, Text):
            found = [(at, at + len(item), vocab, item) for vocab in word_vocabs for item in vocab.items if item
                     for at in _word_spans(part.value, item)]
            sites += [("word", (pi, start), vocab, item) for start, end, vocab, item in found
                      if not _inside_longer(start, end, vocab, found)]
    repeats = _repeats(split_clauses(render(tree)))
    while sites:
        kind, where, vocab, old = sites.pop(rng.randrange(len(sites)))
        if kind == "clause":
            line = lambda i: escape_text(vocab.clause(i)).join(wraps[where])  # noqa: E731
            others = [t for ci, t in enumerate(texts) if ci != where]
            choices = [i for i in vocab.items if i != old and _repeats([*others, line(i)]) <= _repeats(others)]
        else:
            pi, at = where

            def swapped(item: str) -> list[str]:
                parts = list(tree.parts)
                value = parts[pi].value
                parts[pi] = Text(value[:at] + item + value[at + len(old):])
                return split_clauses(render(Seq(tuple(parts))))
            # a word swap must not make a clause repeat another ("red car, blue car" -> "red car, red car")
            choices = [i for i in vocab.items if i != old and _repeats(swapped(i)) <= repeats]
        if not choices:
            continue
        new = rng.choice(choices)
        if kind == "clause":
            out = list(texts)
            out[where] = line(new)
            args = {"vocabulary": vocab.name, "old": old, "new": new, "clause": where}
        else:
            out = swapped(new)
            args = {"vocabulary": vocab.name, "old": old, "new": new, "part": pi, "at": at}
        m = _mutant(prompt, out, "swap", args)
        if m is not None:
            return m
    return None


def _repeats(clauses: list[str]) -> int:
    """How many clauses repeat an earlier one, read without their emphasis (`(red car:1.2)` holds `red car`)."""
    bare = {found[0] if (found := emphasis(c)) is not None else c for c in clauses}
    return len(clauses) - len(bare)


def insert(prompt: str, rng: random.Random, resources: Resources) -> Mutant | None:
    """Add a line of a modifier list as a new clause (anywhere after the first)."""
    resources = as_resources(resources)
    texts = split_clauses(prompt)
    present = set(texts) | {found[0] for t in texts if (found := emphasis(t)) is not None}  # `(x:1.2)` has x
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
    cuts = [(i, j) for i in range(1, len(a) + 1) for j in range(len(b))]
    rng.shuffle(cuts)
    library = as_resources(resources).library
    for i, j in cuts:  # the first cut whose child is a valid template (two factors of one name are not)
        child = _mutant(prompt, list(dict.fromkeys(a[:i] + b[j:])), "crossover", {"cut": i, "partner_cut": j},
                        parents=(prompt_key(prompt), prompt_key(partner)), not_like=(partner,))
        if child is not None and _compiles(child.prompt, library):
            return child
    return None


def _compiles(template: str, library) -> bool:
    """Whether a child reads as a template: no factor name twice, in the wildcards it reads too when the
    `library` of the parents' wildcards is known."""
    from ..expand import compile_template

    try:
        if library is None:
            assign_names(parse(template, allow_empty=True))
        else:
            compile_template(template, library=library)
    except GrammarError:
        return False
    return True



def reweight(prompt: str, rng: random.Random, resources: Resources | None = None) -> Mutant | None:
    """Emphasise a clause `(clause:w)`, or move an existing weight up or down."""
    texts = split_clauses(prompt)
    movable = [i for i, text in enumerate(texts) if not weight_by_choice(text)]  # `(x:{0.8|1.5})`: no one weight
    if not movable:
        return None
    i = rng.choice(movable)
    found = emphasis(texts[i])
    lo, hi = WEIGHT_RANGE
    if found is None:
        old, new, inner = None, rng.choice(EMPHASIS_WEIGHTS), texts[i]
    else:  # `(x:1.2)`, `[x]`, `((x))`: the brackets are replaced, so the new weight is the one x gets
        inner, old = found[0], round(found[1], 4)
        # a weight outside the range moves toward it; one inside stays in it
        steps = [d for d in WEIGHT_STEPS
                 if (d > 0 if old < lo else d < 0 if old > hi else lo <= round(old + d, 2) <= hi)]
        new = round(old + rng.choice(steps), 2)
    out = list(texts)
    out[i] = f"({inner}:{new:.2f}".rstrip("0").rstrip(".") + ")"  # written as recorded: no 2e+06
    return _mutant(prompt, out, "reweight", {"clause": i, "old": old, "new": new})
