"""Metric spec strings: `NAME:key=value,...` (and the id form `NAME[key=value,...]`) read and written.

A value holding a comma is written in double quotes; `quote_value` and
`parse_metric_spec` are inverse, so a ledger's metric id turns back into the
metric that made it. Values stay text here; the metric's declared options
convert them.
"""

from __future__ import annotations

from typing import Iterable, Mapping


def parse_metric_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`"clip_score:model=ViT-L-14,pretrained=openai"` -> `("clip_score", {"model": ..., "pretrained": ...})`.

    The id form `clip_score[model=ViT-L-14,pretrained=openai]` is read too, so a
    ledger's metric column can be turned back into a metric. A value holding a
    comma is written in double quotes (`text="a red circle, by ian mcque"`;
    `\\"` and `\\\\` inside them stand for `"` and `\\`). Values stay text;
    `get_metric` parses them against the declared option types.
    """
    text = spec.strip()
    if not text:
        raise ValueError("empty metric spec; expected NAME or NAME:key=value,key=value")
    colon, bracket = text.find(":"), text.find("[")
    if text.endswith("]") and bracket >= 0 and (colon < 0 or bracket < colon):
        name, body, offset = text[:bracket], text[bracket + 1:-1], bracket + 1
    else:
        name, _, body = text.partition(":")
        offset = len(name) + 1
    name = name.strip()
    if not name or any(c in name for c in "=,[]: \""):
        raise ValueError(f"metric spec {spec!r}: bad metric name {name!r}; expected NAME or NAME:key=value,...")
    options: dict[str, str] = {}
    lead = len(spec) - len(spec.lstrip())  # columns are counted in the spec as given
    for part, value, column in _split_options(spec, body, offset + lead):
        key, eq, _ = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"metric spec {spec!r}: option {part.strip()!r} at column {column} is not key=value "
                             f"(write e.g. {name}:scale=2.5,batch_size=16; a value with commas in double "
                             f"quotes: text=\"a, b\")")
        if key in options:
            raise ValueError(f"metric spec {spec!r}: option {key!r} given twice")
        options[key] = value
    return name, options


def _split_options(spec: str, body: str, offset: int) -> Iterable[tuple[str, str, int]]:
    """(option text, its value unquoted, 1-based column in `spec`) for each comma-separated option of `body`
    (which starts at index `offset` of `spec`). A value that starts with a double quote runs to the
    closing quote, commas included."""
    i, n = 0, len(body)
    while i < n:
        start = i
        eq = body.find("=", i)
        comma = body.find(",", i)
        if eq < 0 or 0 <= comma < eq:  # no `=` before the next comma: the caller reports it
            stop = n if comma < 0 else comma
            if body[start:stop].strip():
                yield body[start:stop], "", offset + start + 1
            i = stop + 1
            continue
        j = eq + 1
        while j < n and body[j] in " \t":
            j += 1
        if j < n and body[j] == '"':
            value, j = _read_quoted(spec, body, j, offset)
            while j < n and body[j] in " \t":
                j += 1
            if j < n and body[j] != ",":
                raise ValueError(f"metric spec {spec!r}: text after the closing quote at column {offset + j + 1}; "
                                 f"expected a comma or the end (write key=\"value, with commas\")")
        else:
            j = n if comma < 0 else comma
            value = body[eq + 1:j].strip()
        yield body[start:j], value, offset + start + 1
        i = j + 1


def _read_quoted(spec: str, body: str, open_at: int, offset: int) -> tuple[str, int]:
    """The value of the double-quoted text opening at `body[open_at]`, and the index after its closing quote."""
    out: list[str] = []
    j = open_at + 1
    while j < len(body):
        char = body[j]
        if char == "\\" and j + 1 < len(body) and body[j + 1] in '"\\':
            out.append(body[j + 1])
            j += 2
        elif char == '"':
            return "".join(out), j + 1
        else:
            out.append(char)
            j += 1
    raise ValueError(f"metric spec {spec!r}: unbalanced double quote at column {offset + open_at + 1}; "
                     f"close the quoted value (write key=\"value, with commas\")")


def quote_value(value: str) -> str:
    """An option value as a spec or metric id writes it: in double quotes (with `\\` before `"` and `\\`)
    when it holds a comma, starts with a quote or has outer spaces, so that `parse_metric_spec` reads it
    back unchanged; as it is otherwise, so the ids of plain values never change."""
    if value == value.strip() and "," not in value and not value.startswith('"'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_metric_spec(name: str, options: Mapping[str, str]) -> str:
    """`NAME:key=value,...` that `parse_metric_spec` reads back as (name, options)."""
    body = ",".join(f"{key}={quote_value(str(value))}" for key, value in options.items())
    return f"{name}:{body}" if body else name
