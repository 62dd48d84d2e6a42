"""CLI commands for prompt mutation and search (registered on the main app)."""

from __future__ import annotations

import json
import random
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from .cli import DEVICE_OPTION, _user_errors, app, check_grammars, fail, interrupted, read_at_path


class MutateFmt(str, Enum):
    text = "text"
    jsonl = "jsonl"


def parse_ops(text: Optional[str]) -> Optional[dict[str, float]]:
    """`swap,insert` or `swap=2,insert=1` -> operator weights (None, when --ops is not given: all operators)."""
    if text is None:
        return None
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, w = part.partition("=")
        name = name.strip()
        if name in weights:
            raise ValueError(f"--ops {text!r}: operator {name!r} is given twice; give each once")
        try:
            weights[name] = float(w) if eq else 1.0
        except ValueError:
            raise ValueError(f"--ops {text!r}: {part!r} is not NAME or NAME=RATE") from None
    if not weights:
        raise ValueError(f"--ops {text!r}: no operator named; expected NAME or NAME=RATE, comma-separated "
                         "(leave --ops out for all operators)")
    return weights


def parse_lists(text: Optional[str]) -> Optional[list[str]]:
    """`styles, colours` -> the modifier list names, stripped (None, when --lists is not given: the default
    lists); each must be a name the grammar reads as a wildcard, and given once."""
    from .mutate.resources import list_name_problem

    if text is None:
        return None
    names: list[str] = []
    for name in (p.strip() for p in text.split(",") if p.strip()):
        if name in names:
            raise ValueError(f"--lists {text!r}: list {name!r} is given twice; give each once")
        if (problem := list_name_problem(name)) is not None:
            raise ValueError(f"--lists {text!r}: {name!r} is {problem}")
        names.append(name)
    if not names:
        raise ValueError(f"--lists {text!r}: no list named; expected list names, comma-separated, such as "
                         "styles,colours (leave --lists out for the default lists)")
    return names


def check_ops(text: Optional[str], partnered: bool) -> Optional[dict[str, float]]:
    """`parse_ops`, then the operators must be known, their rates valid, and crossover needs --partner."""
    from . import mutate as mu

    weights = parse_ops(text)
    try:
        usable = mu.operator_weights(weights)
    except ValueError as e:
        raise ValueError(f"--ops {text!r}: {e}") from None
    if not partnered and all(mu.OPERATORS[name].needs_partner for name in usable):
        raise ValueError(f"--ops {text!r}: {', '.join(usable)} needs a second prompt; give one with "
                         "--partner PROMPT, or add an operator that needs none (e.g. swap,delete)")
    return weights


def read_argument(arg: str, origin: str, option: str = "") -> tuple[str, str, Optional[Path]]:
    """(text, origin for errors, folder to search for wildcards) of a text-or-@path argument; the text
    must be a valid template, and the grammar's error names the file (or `origin`), line and column,
    after `option` when given."""
    from .grammar import GrammarError, parse

    text, folder = arg, None
    if arg.startswith("@"):
        text, path = read_at_path(arg)
        origin, folder = str(path), path.parent
    try:
        parse(text, origin=origin)
    except GrammarError as e:
        if not option:
            raise
        fail(f"error: {option} {arg!r}: expected a valid template: {e}")
    return text, origin, folder


def no_mutant(text: str, ops: Optional[str]) -> str:
    which = f"no operator in --ops {ops!r}" if ops else "no operator"
    return (f"{which} could change the prompt {text!r}; try other --ops, more --lists, or a --template "
            "whose factors swap can exchange")


@app.command()
def mutate(
    prompt: str = typer.Argument(..., help="Prompt or template text, or @path to a file holding it."),
    n: int = typer.Option(10, "-n", min=0, help="Number of mutants."),
    ops: Optional[str] = typer.Option(None, "--ops", help="Operators, e.g. swap,insert or swap=2,delete=1 "
                                                           "(default: all)."),
    seed: int = typer.Option(0, "--seed", help="Mutation RNG seed."),
    fmt: MutateFmt = typer.Option(MutateFmt.text, "--format", help="text | jsonl"),
    partner: List[str] = typer.Option([], "--partner", help="Second prompt for crossover (repeatable)."),
    template: Optional[str] = typer.Option(None, "--template", help="Template whose factors' options swap "
                                                                     "may exchange (text or @path)."),
    lists: Optional[str] = typer.Option(None, "--lists", help="Modifier lists, comma-separated (default: "
                                                               "styles,mediums,artists,lighting,quality,colours)."),
    leave_one_out: bool = typer.Option(False, "--leave-one-out", help="Print the N prompts that each lack one "
                                                                      "of the N clauses, then stop."),
    grammars: List[Path] = typer.Option([], "--grammars", help="Extra wildcard folder (repeatable)."),
) -> None:
    """Mutants of a prompt with their lineage (parent key, operator, arguments)."""
    from . import mutate as mu
    from .grammar import GrammarError
    from .mutate.resources import missing_lists_note
    from .wildcards import WildcardLibrary, default_search_path

    check_grammars(grammars)
    try:
        text, _, prompt_dir = read_argument(prompt, "<prompt>")
        if leave_one_out:
            unused = [name for name, given in (("--ops", ops is not None), ("--lists", lists is not None),
                                               ("--partner", bool(partner)), ("--template", template is not None))
                      if given]
            if unused:
                raise ValueError(f"--leave-one-out prints the prompt without each of its clauses, which "
                                 f"{' and '.join(unused)} {'does' if len(unused) == 1 else 'do'} not change; "
                                 f"drop {'it' if len(unused) == 1 else 'them'} or --leave-one-out")
            result = mu.leave_one_out(text)
        else:
            weights = check_ops(ops, partnered=bool(partner))
            partners = [read_argument(p, "<partner>", "--partner")[0] for p in partner]
            source, origin, template_dir = read_argument(template, "<template>") if template else (None, "", None)
            # wildcards are looked up beside the files given, then where `harness expand` looks
            folders = [d for d in (template_dir, prompt_dir) if d is not None]
            library = WildcardLibrary(default_search_path(None, [*folders, *grammars]))
            resources = mu.Resources.load(library, parse_lists(lists), template=source, origin=origin)
            note = None if lists else missing_lists_note(resources, library)
            if note:
                typer.echo(note, err=True)
            result = mu.mutants(text, n, random.Random(seed), resources, operators=weights, partners=partners)
    except GrammarError as e:
        fail(str(e))
    except ValueError as e:
        fail(f"error: {e}")
    if not leave_one_out and n > 0 and not result:
        fail(no_mutant(text, ops), code=1)
    if not leave_one_out and 0 < len(result) < n:
        typer.echo(f"note: {len(result)} distinct mutants of {n} asked for: the operators found no others",
                   err=True)
    for m in result:
        if fmt is MutateFmt.jsonl:
            sys.stdout.write(json.dumps(m.to_dict(), ensure_ascii=False) + "\n")
        else:
            args = json.dumps(dict(m.args), ensure_ascii=False, sort_keys=True)
            sys.stdout.write(f"{m.prompt}\t{m.operator} {args} parent={','.join(k[:12] for k in m.parents)}\n")


@app.command()
def evolve(
    experiment: Path = typer.Argument(..., help="experiment .toml with a \\[search] table"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default reports/<name>)."),
    device: Optional[str] = DEVICE_OPTION,
) -> None:
    """Evolve prompts against metrics (resumable); writes search tables and a trajectory plot."""
    from .search import SearchError, _fmt
    from .search import evolve as run_search

    try:
        r = run_search(experiment, out=out, device=device)
    except KeyboardInterrupt:
        interrupted()
    except _user_errors() + (SearchError,) as e:
        fail(str(e))
    typer.echo(f"run folder: {r.run_dir} (search {r.search_id})")
    for gen in r.generations:
        b = gen.best
        fit = "n/a" if b.fitness is None else f"{b.fitness:.4g}"
        ci = "" if b.ci[0] is None else f" [{b.ci[0]:.4g}, {b.ci[1]:.4g}]"
        typer.echo(f"generation {gen.index}: best {fit}{ci}  {b.text}")
    budget = "" if r.budget is None else f" of {r.budget}"
    typer.echo(f"stopped: {r.stopped}; images used {r.final.images_used}{budget}, {r.generated} made now")
    b = r.best
    ci = "" if b.ci[0] is None else f" [{b.ci[0]:.4g}, {b.ci[1]:.4g}]"
    where = f"generation {b.born}"
    if b.key != r.final.best.key:
        where += f"; the last generation's best is {r.final.best.text!r}"
    typer.echo(f"best prompt: {b.text} (fitness {_fmt(b.fitness)}{ci}, {where})")
    for p in r.outputs:
        if p.suffix in (".md", ".png"):
            typer.echo(f"wrote {p}")


@app.command()
def ablate(
    experiment: Path = typer.Argument(..., help="experiment .toml"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default reports/<name>)."),
    metric: List[str] = typer.Option([], "--metric", "-m", help="Metric spec (repeatable; default: the "
                                                                 "experiment's, minus health and watermark)."),
    device: Optional[str] = DEVICE_OPTION,
    n_boot: int = typer.Option(2000, "--n-boot", min=100, max=1_000_000,
                                help="Bootstrap resamples (100 to 1,000,000)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Bootstrap seed (0 or more)."),
) -> None:
    """Leave-one-out clause ablation: each clause's contribution with a 95% CI, ranked."""
    from .ablation import ablate as run_ablation

    try:
        r = run_ablation(experiment, out=out, metrics=metric or None, device=device, n_boot=n_boot, seed=seed)
    except KeyboardInterrupt:
        interrupted()
    except KeyError as e:  # an unknown --metric name (the experiment's own metrics were checked when loaded)
        fail(f"--metric: {e.args[0] if e.args else e}")
    except _user_errors() as e:
        fail(str(e))
    except ValueError as e:
        fail(f"error: {e}")
    typer.echo(f"run folder: {r.run_dir} ({r.generated} images made now)")
    typer.echo("")
    typer.echo(r.to_text().rstrip())
    for p in r.outputs:
        if p.suffix == ".md":
            typer.echo(f"\nwrote {p}")
