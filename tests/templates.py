"""Helpers for tests of templates: the prompts a template expands to, and the error it raises."""

import pytest

from harness.expand import compile_template
from harness.grammar import GrammarError


def prompts(template, **kw):
    return [v.prompt for v in compile_template(template, **kw).expand()]


def error(template, **kw) -> GrammarError:
    with pytest.raises(GrammarError) as info:
        compile_template(template, **kw)
    return info.value
