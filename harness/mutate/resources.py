"""What the operators draw from: modifier lists (wildcard files) and the
factors of a source template, each as a `Vocabulary` of interchangeable texts."""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

from ..core import content_key
from ..expand import alternations, compile_template, expand
from ..grammar import GrammarError, Wildcard, parse
from ..wildcards import WildcardLibrary
from .clauses import _WS

DEFAULT_LISTS = ("styles", "mediums", "artists", "lighting", "quality", "colours")
# How a line of a list reads as a clause, and lists whose items are single words inside clauses.
LIST_FORMS = {"artists": "by {}", "colours": "{} color palette"}
WORD_LISTS = frozenset({"colours"})
MAX_ITEMS = 2000  # expansions kept per list or factor


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
    """What the operators draw from: modifier lists and a source template's factors; `library`, the wildcards
    the prompts read (a crossover child must compile with them)."""

    lists: tuple[Vocabulary, ...] = ()
    factors: tuple[Vocabulary, ...] = ()
    library: WildcardLibrary | None = field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, library: WildcardLibrary, lists: Sequence[str] | None = None,
             template: str | None = None, origin: str = "<template>") -> "Resources":
        """Read modifier lists from `library` (default: `DEFAULT_LISTS`, those
        present) and the factors of `template` (its alternations' options;
        `origin` names it in errors)."""
        explicit = lists is not None
        vocabularies = []
        for name in (DEFAULT_LISTS if lists is None else lists):
            if (problem := list_name_problem(name)) is not None:
                raise ValueError(f"modifier list {name!r}: {problem}")
            if library.get(name) is None:
                if explicit:
                    usable = [n for n in library.names() if list_name_problem(n) is None]
                    close = difflib.get_close_matches(name, usable, n=3, cutoff=0.5)
                    hint = f"; did you mean {', '.join(close)}?" if close else ""
                    where = library.searched()
                    raise ValueError(f"modifier list {name!r}: no {name}.txt in {where}{hint}")
                continue
            items = _expansions(compile_template(f"__{name}__", library=library).tree)
            vocabularies.append(Vocabulary(name, tuple(i for i in items if i), LIST_FORMS.get(name.split("/")[0], "{}"),
                                           words=name.split("/")[0] in WORD_LISTS))
        factors = []
        if template is not None:
            tree = compile_template(template, library=library, origin=origin).tree
            for alt in alternations(tree):
                if alt.k is None:
                    items = list(dict.fromkeys(t for o in alt.options for t in _expansions(o.body)))
                    if len(items) > 1:
                        factors.append(Vocabulary(f"factor:{alt.name}", tuple(items), words=True, insertable=False))
        return cls(tuple(vocabularies), tuple(factors), library)

    def digest(self) -> str:
        """A content key of everything the operators can draw (for resume checks)."""
        return content_key([[v.name, list(v.items), v.form, v.words, v.insertable]
                            for v in (*self.lists, *self.factors)])


def list_name_problem(name: str) -> str | None:
    """Why `name` cannot name a modifier list, or None: a list is read as the wildcard `__name__`, so its
    name must be one the grammar reads as a whole wildcard name (not `my list`, `_priv` or `a__b`)."""
    try:
        parts = parse(f"__{name}__").parts
    except GrammarError:
        parts = ()
    if len(parts) == 1 and isinstance(parts[0], Wildcard) and parts[0].path == unicodedata.normalize("NFC", name):
        return None
    return (f"not a list name: a list is read as the wildcard __{name}__, whose name starts with a letter or "
            "digit and holds only letters, digits, '_', '-', '.' and '/' (no '__' inside, no '_' last); "
            "rename the file to use it")


def missing_lists_note(resources: Resources, library: WildcardLibrary) -> str | None:
    """A note when none of the default modifier lists was found (run away from the repository's
    ./grammars): `swap` and `insert` then draw only from the template's own factors."""
    if resources.lists:
        return None
    where = ", ".join(map(str, library.search_path)) or "no wildcard folder exists"
    return (f"note: none of the modifier lists {', '.join(DEFAULT_LISTS)} is on the wildcard search path "
            f"({where}), so swap and insert draw only from the prompt's own factors; run from the "
            "repository root or set HARNESS_GRAMMARS to its grammars folder (harness mutate: or --grammars DIR)")


def _expansions(tree) -> list[str]:
    return list(dict.fromkeys(_WS.sub(" ", v.prompt).strip() for v in expand(tree, limit=MAX_ITEMS)))


def as_resources(resources: Resources | WildcardLibrary | None) -> Resources:
    if resources is None:
        return Resources()
    if isinstance(resources, WildcardLibrary):
        return Resources.load(resources)
    return resources
