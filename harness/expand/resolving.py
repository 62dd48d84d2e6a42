"""Wildcard resolution: every `__path__` becomes an alternation over its file's
lines, each line parsed as a template of its own; unknown, empty and cyclic
wildcards are grammar errors that point at the template text."""

from __future__ import annotations

import difflib
from dataclasses import replace

from ..grammar import MAX_DEPTH, Alt, GrammarError, Option, Seq, Text, is_wildcard_name, parse, sole_wildcard
from ..wildcards import WildcardLibrary


def resolve(node, library: WildcardLibrary, stack: tuple[str, ...] = ()):
    """Replace wildcards by alternations over their file's lines. Every unknown, empty or cyclic
    wildcard, and one reached through more than `MAX_DEPTH` others, is reported in one GrammarError
    (the first, with the others after it). `stack` holds the wildcards being resolved, outermost first."""
    problems: dict[str, GrammarError] = {}
    tree = _resolve(node, library, stack, problems)
    if problems:
        first, *rest = problems.values()
        raise first.with_also(rest)
    return tree


def _resolve(node, library: WildcardLibrary, stack: tuple[str, ...], problems: dict):
    if isinstance(node, Seq):
        return Seq(tuple(_resolve(p, library, stack, problems) for p in node.parts))
    if isinstance(node, Text):
        return node
    if isinstance(node, Alt):
        if node.k is not None and (w := sole_wildcard(node.options)) is not None and w.name is None:
            return _choose_from_wildcard(node, w, library, stack, problems)
        return replace(node, options=tuple(Option(_resolve(o.body, library, stack, problems), o.weight)
                                           for o in node.options))
    # Wildcard
    try:
        problem = _problem(node, library, stack)
    except GrammarError as exc:  # a file that cannot be read: reported with the others, not instead of them
        problem = exc
    if problem is not None:
        problems.setdefault(str(problem), problem)  # a wildcard file reached twice reports its lines once
        return Text("")
    wf = library.get(node.path)
    options = []
    for lineno, _, source in wf.lines:
        source = source.rstrip()  # parsed in place, so errors show the line and column as in the file
        try:
            body = parse(source, origin=str(wf.path), allow_empty=True, first_line=lineno,
                         start=len(source) - len(source.lstrip()))
        except GrammarError as exc:  # one error for the template: every problem of every file in it
            problems.setdefault(str(exc), exc)
            continue
        options.append(Option(_resolve(body, library, (*stack, node.path), problems)))
    return Alt(tuple(options), name=node.name, wildcard=node.path, loc=node.loc)


def _choose_from_wildcard(alt: Alt, w, library: WildcardLibrary, stack: tuple[str, ...], problems: dict):
    """`{2$$__w__}`: choose k of the wildcard's lines (as dynamicprompts does); one factor named like
    the wildcard (`w`, or the alternation's @name) whose value is the joined choice."""
    lines = _resolve(w, library, stack, problems)
    if not isinstance(lines, Alt):
        return lines  # its problem is reported
    if alt.k[1] > len(lines.options):
        problem = GrammarError(f"choose-k asks for {alt.k[1]} but wildcard __{w.path}__ has only "
                               f"{len(lines.options)} options (lines of its file)", alt.loc)
        problems.setdefault(str(problem), problem)
        return Text("")
    return replace(alt, options=lines.options, wildcard=w.path)


def _problem(node, library: WildcardLibrary, stack: tuple[str, ...]) -> GrammarError | None:
    width = len(node.path) + 4
    if node.path in stack:
        chain = " -> ".join((*stack[stack.index(node.path):], node.path))
        return GrammarError(f"wildcard cycle: {chain}", node.loc, length=width)
    if len(stack) >= MAX_DEPTH:  # a chain as deep as this is a mistake, and deeper ones exhaust Python's stack
        chain = " -> ".join((*stack, node.path))
        return GrammarError(f"wildcards nest deeper than {MAX_DEPTH} levels: {chain}", node.loc, length=width)
    wf = library.get(node.path)
    if wf is None:
        folders = library.folders_named(node.path)
        if folders:
            return GrammarError(f"wildcard __{node.path}__: {folders[0]} is a folder; expected a text file of "
                                "options, one per line", node.loc, length=width)
        where = library.searched()
        return GrammarError(f"unknown wildcard __{node.path}__: no {node.path}.txt in {where}"
                            f"{_suggestion(node, library.names())}", node.loc, length=width)
    if not wf.lines:
        return GrammarError(f"wildcard __{node.path}__ has no options: {wf.path} holds only blank or # lines",
                            node.loc, length=width)
    return None


def _suggestion(node, names: list[str]) -> str:
    """Close names that can be written as a wildcard; a close file that cannot (`_priv.txt`, `my list.txt`)
    is named with the rule it breaks, never suggested as it would be typed (`___priv__` reads as `_` and
    then `__priv__`)."""
    usable = [n for n in names if is_wildcard_name(n)]
    close = difflib.get_close_matches(node.path, usable, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join('__' + c + '__' for c in close)}?" if close else ""
    unusable = difflib.get_close_matches(node.path, [n for n in names if not is_wildcard_name(n)], n=1, cutoff=0.5)
    if unusable:
        hint += (f"; {unusable[0]}.txt cannot be used as a wildcard: a wildcard's name starts with a letter or "
                 "digit and holds only letters, digits, '_', '-', '.' and '/' (rename the file)")
        if node.loc is not None and node.loc.text[:node.loc.offset].endswith("_"):
            hint += f"; ___{node.path}__ reads as the text '_' and then __{node.path}__"
    return hint
