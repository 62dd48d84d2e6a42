"""Notes on expanded prompts that are valid but rarely what was meant."""

from __future__ import annotations

import re
from typing import Iterable, Iterator

_DANGLING = re.compile(r"^\s*,|,\s*,|,\s*$")  # a comma with nothing before it, between two, or after it


class CommaCheck:
    """Counts, as prompts stream past (`watch`), those holding a comma with nothing on one side (`a red
    circle, ` from `a red circle, {by x|}`): the comma was written outside an option that can be empty. The
    text encoder reads it as a token, so the arms of a comparison differ by more than the option."""

    def __init__(self) -> None:
        self.seen, self.hits, self.example = 0, 0, ""

    def watch(self, items: Iterable, prompt_of=lambda item: item) -> Iterator:
        for item in items:
            prompt = prompt_of(item)
            self.seen += 1
            if _DANGLING.search(prompt):
                self.hits += 1
                self.example = self.example or prompt
            yield item

    def note(self) -> str | None:
        if not self.hits:
            return None
        return (f"{self.hits} of {self.seen} prompts hold a comma with nothing on one side (e.g. {self.example!r}): "
                "a comma written outside an option that can be empty; put it inside the option, "
                "`{, by greg rutkowski|}`, so the prompts without it carry no stray comma (a token the text "
                "encoder reads, which the arms of a comparison would then differ by too)")


def dangling_commas(prompts: Iterable[str]) -> str | None:
    """`CommaCheck`'s note over distinct `prompts`, or None when no prompt holds a dangling comma."""
    check = CommaCheck()
    for _ in check.watch(dict.fromkeys(prompts)):
        pass
    return check.note()
