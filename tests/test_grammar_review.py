"""Grammar and mutation edge cases: a private-use character the slash rule once used inside, templates
whose nesting is too deep to walk, and mutants whose clauses each read alone."""

from __future__ import annotations

import pytest

from harness.expand import compile_template
from harness.grammar import escape_text, parse


def prompts(template: str) -> list[str]:
    return [v.prompt for v in compile_template(template).expand()]


@pytest.mark.parametrize("text", ["icon\ue000 x", "AC\ue000DC/metallica", "a\ue000/b", "x\ue001y/z"])
def test_a_private_use_character_is_kept_literally_and_splits_no_word(text):
    assert prompts(escape_text(text)) == [text]


def test_escaped_slashes_still_join_words_beside_the_private_use_character():
    assert prompts("AC\\/DC/metallica \ue000") == ["AC/DC \ue000", "metallica \ue000"]
    assert prompts("red/green\ue000") == ["red/green\ue000"]  # no whole token: the character is no end mark
    assert [type(p).__name__ for p in parse("a \ue000 red/green").parts] == ["Text", "Alt"]
