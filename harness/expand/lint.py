"""Notes on expanded prompts that are valid but rarely what was meant."""

from __future__ import annotations

import re
from typing import Iterable, Iterator

# where a comma has nothing on one side, and what to write instead
_PLACES = (
    ("at the end", re.compile(r",\s*$"),
     "write it inside the option after it, `a cat{, by greg rutkowski|}`, or leave it out"),
    ("at the start", re.compile(r"^\s*,"),
     "nothing comes before it; an optional clause written first takes its comma after it, "
     "`{by greg rutkowski, |}a cat`"),
    ("with two commas in a row", re.compile(r",\s*,"),
     "an option between them was empty; write one of the commas inside that option, "
     "`a cat{, by greg rutkowski|}, oil`"),
)


class CommaCheck:
    """Counts, as prompts stream past (`watch`), those holding a comma with nothing on one side (`a red
    circle, ` from `a red circle, {by x|}`), by where it is: the text encoder reads it as a token, so the
    arms of a comparison differ by more than the option."""

    def __init__(self) -> None:
        self.seen = 0
        self.found: dict[str, list] = {}  # place -> [count, first example]

    def watch(self, items: Iterable, prompt_of=lambda item: item) -> Iterator:
        for item in items:
            prompt = prompt_of(item)
            self.seen += 1
            place = next((name for name, pattern, _ in _PLACES if pattern.search(prompt)), None)
            if place is not None:
                self.found.setdefault(place, [0, prompt])[0] += 1
            yield item

    def note(self) -> str | None:
        if not self.found:
            return None
        hits = sum(n for n, _ in self.found.values())
        said = "; ".join(f"{n} {place} (e.g. {example!r}): {advice}" for place, _, advice in _PLACES
                         if place in self.found for n, example in [self.found[place]])
        return (f"{hits} of {self.seen} prompts hold a comma with nothing on one side, {said}. A stray comma "
                "is a token the text encoder reads, so the arms of a comparison would differ by it too")


def dangling_commas(prompts: Iterable[str]) -> str | None:
    """`CommaCheck`'s note over distinct `prompts`, or None when no prompt holds a dangling comma."""
    check = CommaCheck()
    for _ in check.watch(dict.fromkeys(prompts)):
        pass
    return check.note()
