"""Lineage of a mutant: its prompt, the parent's key (`prompt_key`: `content_key`
of the parent's prompt text), all parents' keys (two for crossover), the
operator and its JSON-able arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..core import canonical_json, content_key


def prompt_key(prompt: str) -> str:
    """The identity of a prompt in lineage records: `content_key` of its text."""
    return content_key(prompt)


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
