"""Factor names: every alternation of a resolved tree gets one, its `@name` if
the template gives it, else a readable name built from its own text."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterator

from ..grammar import Alt, GrammarError, Option, Seq, Text, Wildcard

_NAME_MAX = 48
_SPECIAL = re.compile(r"[\\|{}]")  # characters the template must escape to write them as text


def auto_name(alt: Alt) -> str:
    """A readable name from the alternation's own content as written, so it stays the same
    when unrelated parts of the template change: `red|green`, `artists`, `, by __artists__|`.
    Literal text appears as the template spells it, the grammar's own `\\ | { }` escaped (so `{a\\|b|c}`,
    two options, is not named like `{a|b|c}`), and a wildcard as `__path__`, never its file's lines."""
    if alt.wildcard:
        return alt.wildcard
    name = "|".join(re.sub(r"\s+", " ", _name_text(o.body)).strip() for o in alt.options)
    if len(name) > _NAME_MAX:
        import hashlib
        name = name[: _NAME_MAX - 9] + "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def _name_text(node) -> str:
    if isinstance(node, Seq):
        return "".join(_name_text(p) for p in node.parts)
    if isinstance(node, Text):
        return _SPECIAL.sub(r"\\\g<0>", node.value)
    if isinstance(node, Wildcard) or node.wildcard:
        return f"__{node.path if isinstance(node, Wildcard) else node.wildcard}__"
    if node.slash:
        return "/".join(_name_text(o.body) for o in node.options)
    return "{" + "|".join(_name_text(o.body) for o in node.options) + "}"


def assign_names(tree: Seq) -> Seq:
    explicit: dict[str, Alt] = {}
    for alt in alternations(tree):
        if alt.name:
            if alt.name in explicit and explicit[alt.name] is not alt:
                if alt.loc is not None and alt.loc == explicit[alt.name].loc:  # one text, reached twice
                    raise GrammarError(f"factor name '{alt.name}' is reached twice: the wildcard that holds it is "
                                       "used more than once in the template, and each named factor must be "
                                       "unique; drop the @name from the file (each use then gets a name of its "
                                       "own) or use the wildcard once", alt.loc)
                raise GrammarError(f"factor name '{alt.name}' is used twice; each named factor must be unique",
                                   alt.loc)
            explicit[alt.name] = alt
    taken = set(explicit)
    next_suffix: dict[str, int] = {}  # per base name, the first "#i" not yet tried: linear, not quadratic

    def visit(node):
        if isinstance(node, Seq):
            return Seq(tuple(visit(p) for p in node.parts))
        if isinstance(node, Alt):
            name = node.name
            if not name:
                base = name = auto_name(node)
                i = next_suffix.get(base, 2)
                while name in taken:
                    name, i = f"{base}#{i}", i + 1
                next_suffix[base] = i
                taken.add(name)
            return replace(node, name=name, options=tuple(Option(visit(o.body), o.weight) for o in node.options))
        return node

    return visit(tree)


def alternations(node) -> Iterator[Alt]:
    """Every alternation of a tree, outer before inner, in template order."""
    if isinstance(node, Seq):
        for p in node.parts:
            yield from alternations(p)
    elif isinstance(node, Alt):
        yield node
        for o in node.options:
            yield from alternations(o.body)


def factor_names(tree: Seq) -> list[str]:
    return [a.name for a in alternations(tree) if a.name]


def nested_pairs(tree: Seq) -> list[tuple[str, str]]:
    """(outer, inner) for every factor inside an option of another, at any depth: the outer factor's value
    (its option's text) holds the inner one's, so a comparison of either cannot hold the other fixed."""
    return [(alt.name, inner.name) for alt in alternations(tree) for o in alt.options
            for inner in alternations(o.body)]
