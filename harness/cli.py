"""The `harness` command line: a thin layer over the library.

Each command parses its options, calls one library function and formats the
result. Everything here is scriptable from Python without the CLI.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .expand import compile_template, count_info
from .grammar import GrammarError
from .wildcards import WildcardLibrary, default_search_path

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Reproducible Stable Diffusion prompt studies.")


@app.callback()
def _root() -> None:
    """Reproducible Stable Diffusion prompt studies."""


class Fmt(str, Enum):
    text = "text"
    jsonl = "jsonl"
    csv = "csv"


def fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def load_template(template: str, grammars: list[Path]):
    """`template` is literal text or `@path`; returns a compiled Template."""
    origin, base = "<template>", None
    if template.startswith("@"):
        path = Path(template[1:])
        if not path.is_file():
            fail(f"template file not found: {path}")
        template, origin, base = path.read_text(encoding="utf-8").rstrip("\n"), str(path), path.parent
    library = WildcardLibrary(default_search_path(base, grammars))
    return compile_template(template, library=library, origin=origin)


@app.command()
def expand(
    template: str = typer.Argument(..., help="Template text, or @path to a file holding it."),
    count: bool = typer.Option(False, "--count", help="Print only the number of distinct prompts."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Stop after N prompts."),
    sample: Optional[int] = typer.Option(None, "--sample", min=0, help="Draw N prompts at random."),
    seed: int = typer.Option(0, "--seed", help="Prompt-sampling seed (separate from image seeds)."),
    with_replacement: bool = typer.Option(False, "--with-replacement", help="Let --sample repeat prompts."),
    fmt: Fmt = typer.Option(Fmt.text, "--format", help="text | jsonl | csv"),
    grammars: List[Path] = typer.Option([], "--grammars", help="Extra wildcard folder (repeatable)."),
) -> None:
    """Expand a prompt template into concrete prompts with their factors."""
    try:
        tpl = load_template(template, grammars)
        if count:
            n, exact = count_info(tpl.tree)
            typer.echo(str(n) if exact else f"{n} (upper bound: this template's parts overlap)")
            return
        if sample is not None:
            variants = tpl.sample(sample, random.Random(seed), replace=with_replacement)
            if limit is not None:
                variants = variants[:limit]
        else:
            variants = tpl.expand(limit=limit)
        write_variants(variants, fmt, tpl.factors)
    except GrammarError as e:
        fail(str(e))
    except ValueError as e:
        fail(f"error: {e}")


def write_variants(variants, fmt: Fmt, factors: list[str]) -> None:
    out = sys.stdout
    if fmt is Fmt.csv:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["prompt", *factors])
        for v in variants:
            w.writerow([v.prompt, *(v.factors.get(f, "") for f in factors)])
        return
    for v in variants:
        if fmt is Fmt.jsonl:
            out.write(json.dumps(v.to_dict(), ensure_ascii=False) + "\n")
        else:
            out.write(v.prompt + "\n")


def main() -> None:  # pragma: no cover
    app()
