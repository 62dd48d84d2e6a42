"""The first spelling of a prompt: the factors of the first choice path, in
template order, that renders a given text (`first_spelling`). A search over the
alternations in order, never an enumeration of paths, so it is quick however
many paths a template has; it gives what `paths._iter` order would find first.

The search keeps, for each node and each position in the text, the positions
the node can end at, each with the factors of the first path that gets there
(in path order). A later path to the same end is never better: everything after
it is the same, and the earlier one comes first.
"""

from __future__ import annotations

from ..grammar import Alt, Seq, Text
from .paths import DEFAULT_JOINER

# Factors are held as ropes while searching (None, ("pairs", tuple of pairs) or ("then", rope, rope)),
# flattened at the end, so a long template does not copy ever longer tuples.
_Ends = dict  # end position -> factors rope of the first path that reaches it, in first-reached order


def first_spelling(tree, text: str) -> tuple | None:
    """The factor (name, value) pairs of the first path that spells `text`, or None if none does."""
    ends = _ends(tree, text, 0, {})
    if len(text) not in ends:
        return None
    out: list = []
    stack = [ends[len(text)]]
    while stack:
        rope = stack.pop()
        if rope is None:
            continue
        if rope[0] == "pairs":
            out.extend(rope[1])
        else:
            stack += (rope[2], rope[1])
    return tuple(out)


def _ends(node, text: str, pos: int, memo: dict) -> _Ends:
    if isinstance(node, Text):
        return {pos + len(node.value): None} if text.startswith(node.value, pos) else {}
    key = (id(node), pos)
    if key not in memo:
        if isinstance(node, Seq):
            memo[key] = _seq_ends(node.parts, text, {pos: None}, memo)
        elif node.k is None:
            memo[key] = _alt_ends(node, text, pos, memo)
        else:
            memo[key] = _choose_ends(node, text, pos, memo)
    return memo[key]


def _seq_ends(parts, text: str, frontier: _Ends, memo: dict) -> _Ends:
    for part in parts:  # left to right: the first path to an end extends the first path to its prefix
        nxt: _Ends = {}
        for cur, rope in frontier.items():
            for end, sub in _ends(part, text, cur, memo).items():
                if end not in nxt:
                    nxt[end] = _join(rope, sub)
        if not nxt:
            return nxt
        frontier = nxt
    return frontier


def _literals(node) -> tuple[str, ...]:
    """The texts every path of `node` spells, in its own top level (`thing 17` of `{red|blue} thing 17`)."""
    if isinstance(node, Text):
        return (node.value,) if node.value else ()
    if isinstance(node, Seq):
        return tuple(p.value for p in node.parts if isinstance(p, Text) and p.value)
    return ()


def _may_spell(node, text: str, pos: int, memo: dict) -> bool:
    """False where `node` cannot spell a part of `text` from `pos`: a text it always spells is not there.
    A quick test before the search, which an alternation of thousands of options (a long wildcard) needs."""
    key = ("literals", id(node))
    if key not in memo:
        memo[key] = _literals(node)
    return all(text.find(literal, pos) >= 0 for literal in memo[key])


def _alt_ends(alt: Alt, text: str, pos: int, memo: dict) -> _Ends:
    out: _Ends = {}
    for option in alt.options:
        if not _may_spell(option.body, text, pos, memo):
            continue
        for end, sub in _ends(option.body, text, pos, memo).items():
            if end not in out:
                out[end] = _join(("pairs", ((alt.name, text[pos:end]),)), sub)
    return out


def _choose_ends(alt: Alt, text: str, pos: int, memo: dict) -> _Ends:
    """Selections in `_iter_alt` order: k, then the options' order (a depth-first walk over
    permutations that drops a prefix as soon as it cannot match), then the options' own paths."""
    joiner = DEFAULT_JOINER if alt.joiner is None else alt.joiner
    out: _Ends = {}

    def extend(used: tuple, states: dict, k: int) -> None:
        # states: (end, texts chosen so far) -> factors rope, in first-reached order
        if len(used) == k:
            for (end, _), rope in states.items():
                if end not in out:
                    out[end] = _join(("pairs", ((alt.name, text[pos:end]),)), rope)
            return
        for i in plausible:
            if i in used:
                continue
            option = alt.options[i]
            nxt: dict = {}
            for (cur, texts), rope in states.items():
                if used and not text.startswith(joiner, cur):
                    continue
                start = cur + len(joiner) if used else cur
                for end, sub in _ends(option.body, text, start, memo).items():
                    key = (end, (*texts, text[start:end]))
                    if text[start:end] not in texts and key not in nxt:  # a selection never repeats a text
                        nxt[key] = _join(rope, sub)
            if nxt:
                extend((*used, i), nxt, k)

    plausible = [i for i, option in enumerate(alt.options) if _may_spell(option.body, text, pos, memo)]
    for k in range(alt.k[0], alt.k[1] + 1):
        extend((), {(pos, ()): None}, k)
    return out


def _join(first, then):
    """The factors `first` followed by the factors `then` (ropes)."""
    if first is None or then is None:
        return then if first is None else first
    return ("then", first, then)
