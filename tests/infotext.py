"""A reader of AUTOMATIC1111 "infotext" (the PNG `parameters` chunk), for tests.

Written from the format as the web UI reads it, independently of
harness.provenance, so tests check the writer against the format rather than
against itself:

- The text is stripped; its last line is the parameters line when it holds at
  least three ``Key: value`` pairs, otherwise it belongs to the prompt.
- Every earlier line is stripped. Lines belong to the prompt until one starts
  with ``Negative prompt:``; that line and all later ones belong to the
  negative prompt, each with a leading label removed. Lines are joined with ``\\n``; empty lines
  before the first text of a part are dropped.
- Pairs are separated by commas. A value is either a JSON string in double
  quotes (which may hold commas, colons and escaped newlines) or the raw text up
  to the next comma.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

NEGATIVE_LABEL = "Negative prompt:"
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Infotext:
    prompt: str
    negative_prompt: str
    params: dict[str, str] = field(default_factory=dict)


def parse_pairs(line: str) -> dict[str, str] | None:
    """The ``Key: value`` pairs of a parameters line, or None when it is not one."""
    pairs: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i == n:
            break
        colon = line.find(":", i)
        if colon < 0:
            return None
        key = line[i:colon]
        if not key or not (key[0].isalnum() or key[0] == "_") or "," in key or '"' in key:
            return None
        i = colon + 1
        while i < n and line[i].isspace():
            i += 1
        if i < n and line[i] == '"':
            try:
                value, i = _DECODER.raw_decode(line, i)
            except json.JSONDecodeError:
                return None
            while i < n and line[i].isspace():
                i += 1
            if i < n and line[i] != ",":
                return None
        else:
            comma = line.find(",", i)
            end = n if comma < 0 else comma
            value, i = line[i:end], end
        pairs[key] = value
        i += 1  # past the comma (or past the end)
    return pairs


def parse_infotext(text: str) -> Infotext:
    lines = text.strip().split("\n")
    params = parse_pairs(lines[-1])
    if params is not None and len(params) >= 3:
        lines = lines[:-1]
    else:
        params = {}
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_LABEL):
            target = negative
            line = line[len(NEGATIVE_LABEL):].strip()
        if target or line:
            target.append(line)
    return Infotext("\n".join(prompt), "\n".join(negative), params)
